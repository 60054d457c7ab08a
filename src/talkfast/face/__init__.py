"""talkfast.face"""
