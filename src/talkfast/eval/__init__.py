"""talkfast.eval"""
