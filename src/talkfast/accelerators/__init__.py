"""Training-free accelerators that plug into the talkfast models and the one denoising loop."""

from .base import Accelerator
from .caching import CachingConfig, DeepCache, FasterDiffusion, LightningCP
from .config import PRESETS, AccelConfig, build_accelerator, get_preset
from .dfa import DFA, DFAConfig, ReferenceRemoval
from .schedule import KeySchedule

__all__ = [
    "Accelerator", "AccelConfig", "CachingConfig", "DFA", "DFAConfig", "DeepCache", "FasterDiffusion",
    "KeySchedule", "LightningCP", "PRESETS", "ReferenceRemoval", "build_accelerator", "get_preset",
]
