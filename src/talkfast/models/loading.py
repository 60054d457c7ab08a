"""Building a ready model bundle: the network, its VAE and its audio feature extractor, from a
user's Hallo checkpoint folder or EchoMimic ``pretrained_weights`` folder, from talkfast's embedded
weights, or with random weights."""

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
    cfg = get_preset("hallo").replace(hallo_chaining=True)  # a Hallo release samples as Hallo does, whatever its preset says
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


# ---------------------------------------------------------------------------------------- EchoMimic
# EchoMimic v1's ``pretrained_weights`` folder (antgroup/echomimic at a53e970, echomimic_memo.md
# §1.1): which file feeds (reference UNet, denoiser spatial part, denoiser motion modules, face
# locator) in each of the four configs/prompts/animation*.yaml.
ECHOMIMIC_VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "default": ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth"),
    "acc": ("reference_unet.pth", "denoising_unet_acc.pth", "motion_module_acc.pth", "face_locator.pth"),
    "pose": ("reference_unet_pose.pth", "denoising_unet_pose.pth", "motion_module_pose.pth", "face_locator_pose.pth"),
    "pose_acc": ("reference_unet_pose.pth", "denoising_unet_pose_acc.pth", "motion_module_pose_acc.pth",
                 "face_locator_pose.pth"),
}
ECHOMIMIC_WHISPER = "audio_processor/whisper_tiny.pt"  # read by the audio front end (not here)
ECHOMIMIC_VAE = ("sd-vae-ft-mse",)


@dataclass
class EchoMimicWeights:
    """What :func:`load_echomimic` found: the loaded network and the folder's other pieces.

    ``files``: the file each child came from (the denoiser from two). ``ignored``: per file, the
    keys that are not in the model and were skipped (EchoMimic's ``strict=False`` loads).
    ``whisper`` / ``vae``: the whisper-tiny checkpoint and the VAE folder when present (None when
    not); neither is loaded here."""

    net: TalkingHeadNet
    variant: str
    files: dict[str, tuple[Path, ...]]
    ignored: dict[str, list[str]]
    whisper: Path | None
    vae: Path | None


def _listing(items: list[str]) -> str:
    return "; ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")


def read_bare_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``'d plain ``{key: tensor}`` dict (EchoMimic's .pth files), read with
    ``weights_only=True`` (never a full unpickle); memory-mapped when the file's format allows."""
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or holding objects other than tensors
        raise CheckpointError(f"cannot read weights from {path} (read with weights_only=True): {err}") from err
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a bare state dict ({{key: tensor}}), as EchoMimic's files do")
    return obj


def map_echomimic_weights(net: TalkingHeadNet, reference: dict, denoising: dict, motion: dict, face: dict,
                          names: tuple[str, str, str, str] = ECHOMIMIC_VARIANTS["default"]):
    """Map EchoMimic's four state dicts onto ``net``'s children, with EchoMimic's strictness.

    Returns ``({child: state}, {file: ignored keys})``; raises one :class:`CheckpointError` that
    names, per file, every missing, unexpected (strict files only) and mis-shaped key.

    * ``reference_unet`` and ``face_locator``: strict (``load_state_dict`` with the default strict
      in infer_audio2vid*.py).
    * ``denoising_unet``: EchoMimic builds it from sd-image-variations' UNet, merges motion_module.pth
      into that dict where name and shape match (``from_pretrained_2d`` in src/models/unet_3d_echo.py),
      then loads denoising_unet.pth with ``strict=False``. So a key of denoising_unet.pth wins over
      motion_module.pth, keys the model lacks are ignored, and a wrong shape in denoising_unet.pth
      raises. Two deliberate differences, because talkfast does not load the SD base weights that
      EchoMimic falls back on: a model key found in neither file is an error (EchoMimic would keep
      the SD tensor, or a random one where SD's shape differs, e.g. attn2.to_k/to_v (C, 384)), and
      so is a wrong shape in motion_module.pth (EchoMimic drops that tensor silently). The released
      files cover all 1274 keys (686 + 588; echomimic_memo.md §0.5), so neither case arises with them.
    """
    ref_name, den_name, mm_name, face_name = names
    problems: list[str] = []
    states: dict[str, dict[str, torch.Tensor]] = {}

    def report(source: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_listing(shapes)}")
        if parts:
            problems.append(f"{source}: " + ", ".join(parts))

    def shape_of(t: torch.Tensor) -> tuple[int, ...]:
        return tuple(t.shape)

    for child, name, state in (("reference_unet", ref_name, reference), ("face_locator", face_name, face)):
        own = {k: shape_of(v) for k, v in getattr(net, child).state_dict().items()}
        report(name, sorted(set(own) - set(state)), sorted(set(state) - set(own)),
               [f"{k}: file {shape_of(state[k])} vs model {own[k]}" for k in sorted(set(own) & set(state))
                if shape_of(state[k]) != own[k]])
        states[child] = {k: state[k] for k in own if k in state}

    own = {k: shape_of(v) for k, v in net.denoising_unet.state_dict().items()}
    merged, missing, shapes = {}, [], []
    for k, shape in own.items():
        src, t = (den_name, denoising[k]) if k in denoising else (mm_name, motion[k]) if k in motion else (None, None)
        if t is None:
            missing.append(k)
        elif shape_of(t) != shape:
            shapes.append(f"{k}: {src} {shape_of(t)} vs model {shape}")
        else:
            merged[k] = t
    report(f"{den_name} + {mm_name}", sorted(missing), [], sorted(shapes))
    states["denoising_unet"] = merged
    ignored = {den_name: sorted(set(denoising) - set(own)), mm_name: sorted(set(motion) - set(own))}
    if problems:
        raise CheckpointError(f"EchoMimic weights do not match the {net.cfg.name!r} model: " + " | ".join(problems))
    return states, ignored


def is_echomimic_folder(folder: str | Path) -> bool:
    """Whether ``folder`` looks like EchoMimic's ``pretrained_weights`` (any of its denoiser,
    reference UNet or face locator files), not a Hallo or talkfast folder."""
    root = Path(folder).expanduser()
    names = {n for files in ECHOMIMIC_VARIANTS.values() for n in files}
    return root.is_dir() and any((root / n).is_file() for n in names)


def echomimic_preset(variant: str) -> ModelConfig:
    """The preset a variant's files fit: ``echomimic_pose`` (RGB face locator) for the pose ones."""
    return get_preset("echomimic_pose" if variant.startswith("pose") else "echomimic")


def load_echomimic(folder: str | Path, variant: str = "default", cfg: ModelConfig | None = None) -> EchoMimicWeights:
    """EchoMimic v1's released weights from its ``pretrained_weights`` folder.

    ``variant`` picks the files of configs/prompts/animation{,_acc,_pose,_pose_acc}.yaml (a53e970):
    "default", "acc", "pose" or "pose_acc". ``cfg`` (tests: a tiny-width EchoMimic) defaults to the
    ``echomimic`` preset, or ``echomimic_pose`` (RGB face locator) for the pose variants. The net is
    built on ``meta`` and takes the files' tensors as they are (dtype included)."""
    if variant not in ECHOMIMIC_VARIANTS:
        raise ValueError(f"unknown EchoMimic variant {variant!r}; choose one of {sorted(ECHOMIMIC_VARIANTS)}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"EchoMimic weights folder {root} does not exist or is not a folder")
    names = ECHOMIMIC_VARIANTS[variant]
    absent = [str(root / n) for n in names if not (root / n).is_file()]
    if absent:
        raise CheckpointError(f"incomplete EchoMimic {variant!r} weights in {root}; missing:\n  - " + "\n  - ".join(absent))
    if cfg is None:
        cfg = echomimic_preset(variant)
    net = build_net(cfg, device="meta")
    ref, den, mm, face = (read_bare_state_dict(root / n) for n in names)
    states, ignored = map_echomimic_weights(net, ref, den, mm, face, names)
    for child, state in states.items():
        getattr(net, child).load_state_dict(state, strict=True, assign=True)
    for name, keys in ignored.items():
        if keys:
            log.info("EchoMimic %s: ignored %d keys the model does not have (%s)", name, len(keys), _listing(keys))
    whisper = root / ECHOMIMIC_WHISPER
    return EchoMimicWeights(
        net=net.eval().requires_grad_(False), variant=variant,
        files={"reference_unet": (root / names[0],), "denoising_unet": (root / names[1], root / names[2]),
               "face_locator": (root / names[3],)},
        ignored=ignored, whisper=whisper if whisper.is_file() else None, vae=_first(root, ECHOMIMIC_VAE, "config.json"))
