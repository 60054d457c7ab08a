"""talkfast.models"""
