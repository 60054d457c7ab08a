"""talkfast.sampling"""
