"""talkfast.audio"""

from talkfast.audio.whisper import WhisperFeatures, WhisperStream

__all__ = ["WhisperFeatures", "WhisperStream"]
