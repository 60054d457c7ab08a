"""Choosing and loading the model behind a pipeline (embedded default, a user's checkpoint
folder, or random weights), plus device/dtype resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.config import get_preset
from ..models.memo_checkpoint import is_memo_folder
from ..models.loading import (
    EMBEDDED_DIR,
    build_random,
    is_echomimic_folder,
    load_echomimic,
    load_embedded,
    load_hallo,
)
from . import MOTION_SOURCES
from .conditioning import AudioConditioner
from .generate import TalkingHeadPipeline
from .hallo import HalloPipeline
from .preparation import Preparation
from .recipes import plan_preparation

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


def _weights_and_vae(what: str, root: Path, missing: list[str], load):
    """``load()`` (a checkpoint loader whose result names its ``vae`` folder), with the pieces already
    found missing reported in the same error, then the VAE from that folder."""
    from diffusers import AutoencoderKL

    try:
        weights = load()
    except CheckpointError as err:
        if not missing:
            raise
        raise CheckpointError(f"{err}\nalso missing:\n  - " + "\n  - ".join(missing)) from err
    if missing:
        raise CheckpointError(f"incomplete {what} checkpoint in {root}; missing:\n  - " + "\n  - ".join(missing))
    try:
        vae = AutoencoderKL.from_pretrained(str(weights.vae), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load the VAE from {weights.vae}: {err}") from err
    return weights, vae.eval().requires_grad_(False)


def _missing_folder(root: Path, names: tuple[str, ...], what: str) -> list[str]:
    """``[description]`` when none of ``root/name`` holds a config.json, else []."""
    if any((root / v / "config.json").is_file() for v in names):
        return []
    return [f"{what} folder (config.json + weights): one of " + ", ".join(str(root / v) for v in names)]


def load_echomimic_pipeline(root: str | Path, variant: str, device: torch.device, dtype: torch.dtype,
                            prep: dict[str, str] | None = None):
    """An :class:`~talkfast.pipeline.echomimic.EchoMimicPipeline` from EchoMimic's
    ``pretrained_weights`` folder: the variant's four .pth files, ``audio_processor/whisper_tiny.pt``
    and ``sd-vae-ft-mse/`` (one error lists every missing piece)."""
    from ..audio.whisper import WhisperFeatures
    from ..models.loading import ECHOMIMIC_VAE, ECHOMIMIC_WHISPER
    from .echomimic import EchoMimicPipeline

    root = Path(root).expanduser()
    if prep and prep.get("face_box", "none").lower() != "none":
        raise ValueError("--prep face_box takes only 'none' (the Haar detector): EchoMimic's MTCNN weights come "
                         "from the facenet-pytorch package")
    plan = plan_preparation("echomimic", root, prep)
    missing = [f"whisper-tiny checkpoint {root / ECHOMIMIC_WHISPER}"] if not (root / ECHOMIMIC_WHISPER).is_file() else []
    missing += _missing_folder(root, ECHOMIMIC_VAE, "SD VAE")
    weights, vae = _weights_and_vae("EchoMimic", root, missing, lambda: load_echomimic(root, variant))
    whisper = WhisperFeatures(weights.whisper, device=device, dtype=dtype)
    plan.warn_fallbacks()
    return EchoMimicPipeline(weights.net, vae, whisper, variant=variant, device=device, dtype=dtype, source=str(root),
                             prep_plan=plan)


def load_memo_pipeline(root: str | Path, device: torch.device, dtype: torch.dtype, emotion: str | None = None,
                       prep: dict[str, str] | None = None):
    """A :class:`~talkfast.pipeline.memo.MemoPipeline` from MEMO's checkpoint folder (its four
    network folders, an SD VAE folder and a wav2vec2-base-960h folder; one error lists every
    missing piece)."""
    from ..models.memo_checkpoint import MEMO_VAE, MEMO_WAV2VEC, load_memo
    from .memo import MEMO_FPS, MemoPipeline, emotion_index

    prep = dict(prep or {})
    if emotion is not None:
        emotion = emotion_index(emotion)  # before any weights are read
        prep.setdefault("emotion", "none")  # the given label replaces MEMO's labelling: its models are not opened
    root = Path(root).expanduser()
    plan = plan_preparation("memo", root, prep)
    missing = _missing_folder(root, MEMO_VAE, "SD VAE (e.g. sd-vae-ft-mse)")
    missing += _missing_folder(root, MEMO_WAV2VEC, "wav2vec2-base-960h")
    weights, vae = _weights_and_vae("MEMO", root, missing, lambda: load_memo(root))
    audio = AudioConditioner("wav2vec2_file", model_dir=weights.wav2vec, fps=MEMO_FPS, device=device, family="memo")
    return MemoPipeline(weights.net, vae, audio, device=device, dtype=dtype, source=str(root), emotion=emotion,
                        prep=Preparation(plan))


def load_pipeline(checkpoint: str | Path | None = None, *, random_weights: bool = False, preset: str = "small",
                  device: str = "auto", dtype: str = "auto", seed: int = 0,
                  variant: str | None = None, emotion: str | None = None,
                  prep: dict[str, str] | None = None) -> TalkingHeadPipeline:
    """``checkpoint``: a talkfast model folder (model.json), a Hallo ``pretrained_models`` folder,
    an EchoMimic ``pretrained_weights`` folder (``variant``: default, acc, pose, pose_acc; None:
    default) or a MEMO checkpoint folder (``emotion``: the emotion of the speech, default neutral).
    Neither and not ``random_weights``: the embedded default model. ``prep``: {step: path or 'none'}
    (``--prep``) overriding where the family's preparation models are read (:mod:`.recipes`)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    talkfast_folder = checkpoint is not None and (Path(checkpoint) / "model.json").exists()
    memo = checkpoint is not None and not talkfast_folder and is_memo_folder(checkpoint)
    if emotion is not None and not memo:
        raise ValueError("--emotion is for MEMO checkpoint folders only")
    if memo:
        if variant is not None:
            raise ValueError("--variant is for EchoMimic pretrained_weights folders only")
        return load_memo_pipeline(checkpoint, dev, dt, emotion, prep)
    if checkpoint is not None and not talkfast_folder and is_echomimic_folder(checkpoint):
        return load_echomimic_pipeline(checkpoint, variant or "default", dev, dt, prep)
    if variant is not None:
        raise ValueError("--variant is for EchoMimic pretrained_weights folders only")
    if random_weights:
        cfg = get_preset(preset)
        if cfg.audio_features != "mel":
            raise CheckpointError(f"--random-weights with the {preset!r} model needs its wav2vec2 features: "
                                  "pass --checkpoint with a real Hallo folder instead")
        net, vae = build_random(cfg, seed)
        audio = AudioConditioner("mel", device=dev)
        return TalkingHeadPipeline(net, vae, audio, device=dev, dtype=dt, identity="pixels", source=f"random:{preset}")
    if checkpoint is not None and not (Path(checkpoint) / "model.json").exists():
        plan = plan_preparation("hallo", checkpoint, prep)  # a bad --prep before the weights are read
        net, vae, w2v = load_hallo(checkpoint)
        audio = AudioConditioner("wav2vec2_file", model_dir=w2v, device=dev, family="hallo")
        return HalloPipeline(net, vae, audio, prep=Preparation(plan), device=dev, dtype=dt, source=str(checkpoint))
    if prep:
        raise ValueError("--prep is for Hallo, EchoMimic and MEMO checkpoint folders (the embedded model and "
                         "talkfast folders keep their own preparation)")
    folder = Path(checkpoint) if checkpoint is not None else EMBEDDED_DIR
    net, vae, meta = load_embedded(folder)
    audio = AudioConditioner(net.cfg.audio_features, device=dev)
    motion_source = meta.get("motion_source")
    if motion_source is not None and motion_source not in MOTION_SOURCES:
        raise CheckpointError(f"{folder / 'model.json'}: motion_source must be one of {', '.join(MOTION_SOURCES)}, "
                              f"not {motion_source!r}")
    return TalkingHeadPipeline(net, vae, audio, device=dev, dtype=dt, identity="pixels", source=str(folder),
                               motion_source=motion_source)
