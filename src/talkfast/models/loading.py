"""Building a ready model bundle: the network, its VAE and its audio feature extractor, from a
user's Hallo checkpoint folder, from talkfast's embedded weights, or with random weights."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .config import ModelConfig, get_preset
from .net import TalkingHeadNet, build_net

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_DIR = ASSETS / "small"

# Where the pieces of a Hallo ``pretrained_models`` folder may live, relative to the given root.
HALLO_NET = ("hallo/net.pth", "net.pth")
HALLO_VAE = ("sd-vae-ft-mse", "vae")
HALLO_WAV2VEC = ("wav2vec/wav2vec2-base-960h", "wav2vec2-base-960h", "wav2vec2")


@dataclass
class HalloPaths:
    net: Path
    vae: Path
    wav2vec: Path


def _first(root: Path, candidates: tuple[str, ...], need: str = "") -> Path | None:
    """The first candidate under ``root`` that exists (and holds ``need``, when given)."""
    for c in candidates:
        p = root / c
        if (p / need).exists() if need else p.exists():
            return p
    return None


def find_hallo_checkpoint(root: str | Path) -> HalloPaths:
    """Locate ``net.pth``, the SD VAE folder and the wav2vec2 folder under ``root``; raise a
    :class:`CheckpointError` that lists everything missing (with the paths searched)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist or is not a folder")
    net = _first(root, HALLO_NET)
    vae = _first(root, HALLO_VAE, "config.json")
    w2v = _first(root, HALLO_WAV2VEC, "config.json")
    missing = []
    if net is None:
        missing.append("Hallo weights: one of " + ", ".join(str(root / c) for c in HALLO_NET))
    if vae is None:
        missing.append("SD VAE folder (config.json + weights, e.g. sd-vae-ft-mse): one of "
                       + ", ".join(str(root / c) for c in HALLO_VAE))
    if w2v is None:
        missing.append("wav2vec2-base-960h folder (config.json + weights): one of "
                       + ", ".join(str(root / c) for c in HALLO_WAV2VEC))
    if missing:
        raise CheckpointError(f"incomplete Hallo checkpoint in {root}; missing:\n  - " + "\n  - ".join(missing))
    return HalloPaths(net, vae, w2v)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # corrupt, truncated, not a checkpoint
        raise CheckpointError(f"cannot read weights from {path}: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return obj


def load_net_weights(net: TalkingHeadNet, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a readable report of missing/unexpected/mis-shaped keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def head(items):
            return "; ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise CheckpointError(f"{source} does not match the {net.cfg.name!r} model: " + " | ".join(parts))
    on_meta = any(p.is_meta for p in net.parameters())
    net.load_state_dict(state, strict=True, assign=on_meta)


def small_vae_config(cfg: ModelConfig) -> dict:
    """AutoencoderKL config for the small models: one down block per factor of two."""
    levels = max(1, cfg.vae_scale_factor.bit_length())  # 8 -> 4 blocks (3 downsamplings)
    widths = (32, 64, 64, 64, 64)[:levels]
    return dict(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=widths, layers_per_block=1, norm_num_groups=16,
                sample_size=cfg.image_size, scaling_factor=1.0)


def build_random(preset: str | ModelConfig, seed: int = 0) -> tuple[TalkingHeadNet, AutoencoderKL]:
    """A network and VAE with random weights (speed work, tests, ``--random-weights``)."""
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    net = build_net(cfg)
    if cfg.name == "hallo":
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)
    else:
        vae = AutoencoderKL(**small_vae_config(cfg))
    return net, vae.eval().requires_grad_(False)


def load_hallo(root: str | Path) -> tuple[TalkingHeadNet, AutoencoderKL, Path]:
    """Hallo's released weights from a local ``pretrained_models``-style folder."""
    paths = find_hallo_checkpoint(root)
    cfg = get_preset("hallo")
    net = build_net(cfg, device="meta")
    load_net_weights(net, read_state_dict(paths.net), str(paths.net))
    net = net.eval().requires_grad_(False)
    try:
        vae = AutoencoderKL.from_pretrained(str(paths.vae), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load the VAE from {paths.vae}: {err}") from err
    return net, vae.eval().requires_grad_(False), paths.wav2vec


def save_embedded(net: TalkingHeadNet, vae: AutoencoderKL, folder: str | Path, card: dict | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Write a model folder in talkfast's own layout (net.safetensors, vae/, model.json).
    ``dtype`` (e.g. float16, to ship small) stores the network's floating-point tensors in that
    type; loading casts them to the pipeline's dtype."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(folder / "net.safetensors"))
    vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    meta = {"preset": net.cfg.name, "weights_dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
            **(card or {})}
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_model_json(path: Path) -> dict:
    """A talkfast model folder's model.json, checked: a JSON object naming a known ``preset``."""
    from .config import PRESETS

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("preset") not in PRESETS:
        got = meta.get("preset") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} must be a JSON object whose \"preset\" is one of {', '.join(sorted(PRESETS))} "
                              f"(got {got!r}); was this folder written by 'talkfast train export'?")
    return meta


def load_embedded(folder: str | Path = EMBEDDED_DIR) -> tuple[TalkingHeadNet, AutoencoderKL, dict]:
    """Load a folder written by :func:`save_embedded` (the embedded default model by default):
    the network, the VAE and the folder's model.json."""
    folder = Path(folder)
    need = [folder / "model.json", folder / "net.safetensors", folder / "vae" / "config.json"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise CheckpointError(
            f"talkfast model folder {folder} is incomplete (missing: {', '.join(missing)}). "
            + ("The embedded model ships inside the talkfast package: reinstall it (scripts/install.sh). "
               if folder.resolve() == EMBEDDED_DIR.resolve() else "")
            + "Or pass --checkpoint DIR (a talkfast model folder or a Hallo checkpoint), or --random-weights.")
    meta = read_model_json(folder / "model.json")
    net = build_net(get_preset(meta["preset"]), device="meta")
    load_net_weights(net, read_state_dict(folder / "net.safetensors"), str(folder / "net.safetensors"))
    try:
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True)
    except Exception as err:  # a corrupt config.json or weights file
        raise CheckpointError(f"cannot load the VAE from {folder / 'vae'}: {err}") from err
    return net.eval().requires_grad_(False), vae.eval().requires_grad_(False), meta
