"""talkfast.audio"""
