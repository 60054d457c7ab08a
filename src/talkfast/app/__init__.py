"""talkfast.app"""
