"""talkfast.accelerators"""
