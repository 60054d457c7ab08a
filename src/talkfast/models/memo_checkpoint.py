"""MEMO's released checkpoint folder (HF memoavatar/memo as memoavatar/memo a5aee30 loads it;
echomimic_memo.md §2.1, memo_keys.json): one diffusers model folder per network, each a
``config.json`` and a ``diffusion_pytorch_model.safetensors`` with bare keys.

| folder | talkfast child |
|---|---|
| ``reference_net`` | ``reference_unet`` (the last block stops after norm1: 662 keys) |
| ``diffusion_net`` | ``denoising_unet`` (2114 keys: Hallo's 1274 + 840 of the joint audio modules) |
| ``image_proj`` | ``imageproj`` |
| ``audio_proj`` | ``audioproj`` |

Loaded as MEMO's ``from_pretrained`` (diffusers 0.31 with accelerate) does: a model key missing
from its file is an error, so is a wrong shape; a key the model does not have is only reported (a
warning there, a log line here). One :class:`CheckpointError` names every problem of every folder.
The ``misc/`` preparation models (face analysis, vocal separator, audio emotion classifier) are
read by :mod:`talkfast.pipeline.recipes` / :mod:`talkfast.pipeline.preparation`, not here. The SD VAE and wav2vec2-base-960h
folders (HF ids in MEMO's config) are looked for under the same root.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from ..errors import CheckpointError
from .config import ModelConfig, get_preset
from .loading import HALLO_VAE, HALLO_WAV2VEC, _first, _listing
from .net import TalkingHeadNet, build_net

log = logging.getLogger(__name__)

WEIGHTS = "diffusion_pytorch_model.safetensors"
MEMO_FOLDERS = {"reference_unet": "reference_net", "denoising_unet": "diffusion_net", "imageproj": "image_proj",
                "audioproj": "audio_proj"}
MEMO_VAE = HALLO_VAE
MEMO_WAV2VEC = HALLO_WAV2VEC


@dataclass
class MemoWeights:
    """What :func:`load_memo` found: the network, the keys each file had beyond the model
    (``ignored``), and the VAE and wav2vec2 folders (None when absent; not loaded here)."""

    net: TalkingHeadNet
    ignored: dict[str, list[str]]
    vae: Path | None
    wav2vec: Path | None


def is_memo_folder(folder: str | Path) -> bool:
    """Whether ``folder`` looks like MEMO's checkpoint (its reference_net and diffusion_net folders)."""
    root = Path(folder).expanduser()
    return (root / "diffusion_net").is_dir() and (root / "reference_net").is_dir()


def match_memo_folders(net: TalkingHeadNet, found: dict[str, dict[str, tuple[int, ...]]]) -> dict[str, list[str]]:
    """Check the key -> shape maps of the four folders' files (``found[folder]``) against ``net``
    with MEMO's strictness; returns the extra keys per folder, or raises one
    :class:`CheckpointError` naming every missing and mis-shaped key of every folder."""
    problems, ignored = [], {}
    for child, sub in MEMO_FOLDERS.items():
        shapes_found = found[sub]
        own = {k: tuple(v.shape) for k, v in getattr(net, child).state_dict().items()}
        missing = sorted(set(own) - set(shapes_found))
        shapes = [f"{k}: file {shapes_found[k]} vs model {own[k]}" for k in sorted(set(own) & set(shapes_found))
                  if shapes_found[k] != own[k]]
        parts = ([f"{len(missing)} missing keys: {_listing(missing)}"] if missing else []) + \
                ([f"{len(shapes)} shape mismatches: {_listing(shapes)}"] if shapes else [])
        if parts:
            problems.append(f"{sub}/{WEIGHTS}: " + ", ".join(parts))
        ignored[sub] = sorted(set(shapes_found) - set(own))
    if problems:
        raise CheckpointError(f"MEMO weights do not match the {net.cfg.name!r} model: " + " | ".join(problems))
    return ignored


def memo_weight_files(root: Path) -> dict[str, Path]:
    """The four weights files of a MEMO folder; one :class:`CheckpointError` lists the absent ones."""
    if not root.is_dir():
        raise CheckpointError(f"MEMO checkpoint folder {root} does not exist or is not a folder")
    files = {sub: root / sub / WEIGHTS for sub in MEMO_FOLDERS.values()}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise CheckpointError(f"incomplete MEMO checkpoint in {root}; missing:\n  - " + "\n  - ".join(absent))
    return files


def load_memo(folder: str | Path, cfg: ModelConfig | None = None) -> MemoWeights:
    """MEMO's weights from a local copy of its checkpoint folder; ``cfg`` (tests: a tiny width)
    defaults to the ``memo`` preset. The net is built on ``meta`` and takes the files' tensors as
    they are (MEMO's are fp32)."""
    root = Path(folder).expanduser()
    files = memo_weight_files(root)
    net = build_net((cfg or get_preset("memo")).replace(hallo_chaining=True), device="meta")  # MEMO samples as released
    states = {}
    for sub, path in files.items():
        try:
            states[sub] = load_file(str(path))
        except Exception as err:  # corrupt, truncated, not safetensors
            raise CheckpointError(f"cannot read weights from {path}: {err}") from err
    ignored = match_memo_folders(net, {sub: {k: tuple(v.shape) for k, v in st.items()} for sub, st in states.items()})
    for child, sub in MEMO_FOLDERS.items():
        own = getattr(net, child).state_dict()
        getattr(net, child).load_state_dict({k: states[sub][k] for k in own}, strict=True, assign=True)
    for sub, keys in ignored.items():
        if keys:
            log.warning("MEMO %s: %d keys the model does not have were ignored (%s)", sub, len(keys), _listing(keys))
    return MemoWeights(net.eval().requires_grad_(False), ignored, _first(root, MEMO_VAE, "config.json"),
                       _first(root, MEMO_WAV2VEC, "config.json"))
