"""talkfast.io"""
