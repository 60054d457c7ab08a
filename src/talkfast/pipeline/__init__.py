"""talkfast.pipeline"""
