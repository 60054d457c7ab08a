"""Choosing and loading the model behind a pipeline (embedded default, a user's checkpoint
folder, or random weights), plus device/dtype resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.config import get_preset
from ..models.loading import EMBEDDED_DIR, build_random, load_embedded, load_hallo
from . import MOTION_SOURCES
from .conditioning import AudioConditioner
from .generate import TalkingHeadPipeline

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not a device talkfast runs on: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckpointError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        dt = DTYPES[name]
    except KeyError:
        raise ValueError(f"--dtype must be one of auto, {', '.join(sorted(DTYPES))}; got {name!r}") from None
    if device.type == "cpu" and dt != torch.float32:
        log.warning("--dtype %s on the CPU runs many times slower than fp32 (CPU kernels for half types are "
                    "slow); use --dtype fp32 (or auto) unless you need %s numerics", name, name)
    return dt


def load_pipeline(checkpoint: str | Path | None = None, *, random_weights: bool = False, preset: str = "small",
                  device: str = "auto", dtype: str = "auto", seed: int = 0) -> TalkingHeadPipeline:
    """``checkpoint``: a talkfast model folder (model.json) or a Hallo ``pretrained_models``
    folder. Neither and not ``random_weights``: the embedded default model."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if random_weights:
        cfg = get_preset(preset)
        if cfg.audio_features != "mel":
            raise CheckpointError(f"--random-weights with the {preset!r} model needs its wav2vec2 features: "
                                  "pass --checkpoint with a real Hallo folder instead")
        net, vae = build_random(cfg, seed)
        audio = AudioConditioner("mel", device=dev)
        return TalkingHeadPipeline(net, vae, audio, device=dev, dtype=dt, identity="pixels", source=f"random:{preset}")
    if checkpoint is not None and not (Path(checkpoint) / "model.json").exists():
        net, vae, w2v = load_hallo(checkpoint)
        audio = AudioConditioner("wav2vec2", model_dir=w2v, device=dev)
        return TalkingHeadPipeline(net, vae, audio, device=dev, dtype=dt, identity="zeros", source=str(checkpoint))
    folder = Path(checkpoint) if checkpoint is not None else EMBEDDED_DIR
    net, vae, meta = load_embedded(folder)
    audio = AudioConditioner(net.cfg.audio_features, device=dev)
    motion_source = meta.get("motion_source")
    if motion_source is not None and motion_source not in MOTION_SOURCES:
        raise CheckpointError(f"{folder / 'model.json'}: motion_source must be one of {', '.join(MOTION_SOURCES)}, "
                              f"not {motion_source!r}")
    return TalkingHeadPipeline(net, vae, audio, device=dev, dtype=dt, identity="pixels", source=str(folder),
                               motion_source=motion_source)
