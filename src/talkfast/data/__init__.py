"""talkfast.data"""
