"""``talkfast doctor``: what this machine offers talkfast, and why something is missing."""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import subprocess
from pathlib import Path


def _check(label: str, fn) -> bool:
    try:
        ok, detail = fn()
    except Exception as err:  # a doctor reports, it does not crash
        ok, detail = False, f"{type(err).__name__}: {err}"
    print(f"[{'ok' if ok else '--'}] {label}: {detail}")
    return ok


def _versions():
    names = ["torch", "diffusers", "transformers", "imageio-ffmpeg", "opencv-python-headless"]
    parts = [f"python {platform.python_version()}"]
    for n in names:
        try:
            parts.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            parts.append(f"{n} MISSING")
    return all("MISSING" not in p for p in parts), ", ".join(parts)


def _device():
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return True, f"CUDA: {', '.join(names)}"
    return True, f"CPU only ({torch.get_num_threads()} threads); CUDA not available in this torch build or machine"


def _ffmpeg():
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout
    have = [c for c in ("libx264", "aac") if c in out]
    return len(have) == 2, f"{exe} (encoders: {', '.join(have) or 'none'})"


def _faces():
    import numpy as np

    from ..face.detect import detect_face

    try:
        from skimage import data

        img = data.astronaut()
        r = detect_face(img)
        return r.detected, f"OpenCV Haar cascades; test portrait: {'face found' if r.detected else 'NO face found'}"
    except ImportError:
        r = detect_face(np.zeros((128, 128, 3), np.uint8))
        return True, "OpenCV Haar cascades loaded (scikit-image not installed: no test portrait)"


def _espeak():
    exe = shutil.which("espeak-ng")
    return exe is not None, exe or "espeak-ng not installed (needed only to build the synthetic corpus: apt-get install espeak-ng)"


def _embedded():
    from ..models.loading import EMBEDDED_DIR

    ok = (EMBEDDED_DIR / "net.safetensors").exists()
    return ok, str(EMBEDDED_DIR) if ok else f"not found at {EMBEDDED_DIR} (use --random-weights or --checkpoint)"


def run_doctor(checkpoint: str | None = None) -> int:
    print("talkfast doctor")
    _check("versions", _versions)
    _check("device", _device)
    essential = _check("ffmpeg", _ffmpeg)
    _check("face detector", _faces)
    _check("espeak-ng", _espeak)
    _check("embedded weights", _embedded)
    if checkpoint:
        essential &= _check(f"checkpoint {checkpoint}", lambda: check_checkpoint(checkpoint))
    return 0 if essential else 1


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a weights file, read from its header (safetensors) or memory-mapped
    without copying the data (torch, ``weights_only``); raises on a file that does not read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    from ..models.loading import read_state_dict

    return {k: tuple(v.shape) for k, v in read_state_dict(path).items() if hasattr(v, "shape")}


def _compare(found: dict[str, tuple[int, ...]], preset: str, path: Path) -> str:
    """Key and shape check of network weights against the preset's model (built on ``meta``)."""
    from ..errors import CheckpointError
    from ..models.config import get_preset
    from ..models.net import build_net

    own = {k: tuple(v.shape) for k, v in build_net(get_preset(preset), device="meta").state_dict().items()}
    missing, unexpected = sorted(set(own) - set(found)), sorted(set(found) - set(own))
    shapes = [k for k in sorted(set(own) & set(found)) if own[k] != found[k]]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path} does not match the {preset!r} model: {len(missing)} missing keys "
                              f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                              f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    return f"{path.name}: all {len(own)} tensors, shapes match {preset!r}"


def _weights_folder(folder: Path, what: str) -> str:
    """A diffusers/transformers folder: config.json parses and a weights file's header reads."""
    import json

    from ..errors import CheckpointError

    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'} is not readable JSON ({err})") from err
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise CheckpointError(f"{what} folder {folder} has no weights (.safetensors or .bin)")
    try:
        n = len(_header(files[0]))
    except Exception as err:
        raise CheckpointError(f"cannot read {files[0]}: {err}") from err
    if n == 0:
        raise CheckpointError(f"{files[0]} holds no tensors")
    return f"{what} {folder.name} ({files[0].name}: {n} tensors)"


def _echomimic_folder(root: Path) -> str:
    """EchoMimic's ``pretrained_weights``: every variant whose four files are there is read
    (memory-mapped, ``weights_only``) and checked key by key against its preset on ``meta``, with
    EchoMimic's strictness (:func:`talkfast.models.loading.map_echomimic_weights`); whisper-tiny and
    the VAE folder are reported when present."""
    from ..errors import CheckpointError
    from ..models.loading import (ECHOMIMIC_VAE, ECHOMIMIC_VARIANTS, ECHOMIMIC_WHISPER, echomimic_preset,
                                  map_echomimic_weights, read_bare_state_dict)
    from ..models.net import build_net

    complete = [v for v, names in ECHOMIMIC_VARIANTS.items() if all((root / n).is_file() for n in names)]
    if not complete:
        raise CheckpointError(f"{root} has EchoMimic files but no complete variant; the default needs "
                              + ", ".join(ECHOMIMIC_VARIANTS["default"]))
    parts = []
    for variant in complete:
        names = ECHOMIMIC_VARIANTS[variant]
        net = build_net(echomimic_preset(variant), device="meta")
        states, ignored = map_echomimic_weights(net, *(read_bare_state_dict(root / n) for n in names), names)
        n = sum(len(v) for v in states.values())
        skipped = sum(len(v) for v in ignored.values())
        parts.append(f"{variant}: all {n} tensors, shapes match" + (f" ({skipped} extra keys ignored)" if skipped else ""))
    whisper = root / ECHOMIMIC_WHISPER
    parts.append(f"whisper-tiny {'found' if whisper.is_file() else 'MISSING'} ({ECHOMIMIC_WHISPER})")
    vae = next((root / n for n in ECHOMIMIC_VAE if (root / n).is_dir()), None)
    parts.append(_weights_folder(vae, "VAE") if vae is not None else f"VAE MISSING ({ECHOMIMIC_VAE[0]}/)")
    return "EchoMimic weights folder: " + "; ".join(parts)


def _memo_folder(root: Path) -> str:
    """MEMO's checkpoint folder: the four network files' headers checked key by key against the
    ``memo`` preset on ``meta`` with MEMO's strictness (:func:`talkfast.models.memo_checkpoint.
    match_memo_folders`); the VAE and wav2vec2 folders reported when present."""
    from ..errors import CheckpointError
    from ..models.config import get_preset
    from ..models.memo_checkpoint import MEMO_VAE, MEMO_WAV2VEC, match_memo_folders, memo_weight_files
    from ..models.net import build_net

    found = {}
    for sub, path in memo_weight_files(root).items():
        try:
            found[sub] = _header(path)
        except Exception as err:
            raise CheckpointError(f"cannot read {path}: {err}") from err
    net = build_net(get_preset("memo"), device="meta")
    ignored = match_memo_folders(net, found)
    n, skipped = sum(len(v) for v in found.values()), sum(len(v) for v in ignored.values())
    parts = [f"all {n - skipped} tensors, shapes match" + (f" ({skipped} extra keys ignored)" if skipped else "")]
    for names, what in ((MEMO_VAE, "VAE"), (MEMO_WAV2VEC, "wav2vec2")):
        sub = next((root / n for n in names if (root / n).is_dir()), None)
        parts.append(_weights_folder(sub, what) if sub is not None else f"{what} MISSING ({names[0]}/)")
    return "MEMO checkpoint: " + "; ".join(parts)


def check_checkpoint(folder: str | Path) -> tuple[bool, str]:
    """Read a checkpoint folder's headers: every network key and shape, the VAE's (and wav2vec2's)
    config and weights header. Raises :class:`~talkfast.errors.CheckpointError` saying what is wrong."""
    from ..errors import CheckpointError
    from ..models.loading import find_hallo_checkpoint, is_echomimic_folder, read_model_json
    from ..models.memo_checkpoint import is_memo_folder

    root = Path(folder).expanduser()
    if (root / "model.json").is_file():  # a talkfast model folder
        meta = read_model_json(root / "model.json")
        net = root / "net.safetensors"
        try:
            found = _header(net)
        except Exception as err:
            raise CheckpointError(f"cannot read {net}: {err}") from err
        parts = [_compare(found, meta["preset"], net), _weights_folder(root / "vae", "VAE")]
        return True, "talkfast model folder: " + "; ".join(parts)
    if is_memo_folder(root):
        return True, _memo_folder(root) + _preparation("memo", root)
    if is_echomimic_folder(root):
        return True, _echomimic_folder(root) + _preparation("echomimic", root)
    paths = find_hallo_checkpoint(root)
    try:
        found = _header(paths.net)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read {paths.net}: {err}") from err
    parts = [_compare(found, "hallo", paths.net), _weights_folder(paths.vae, "VAE"),
             _weights_folder(paths.wav2vec, "wav2vec2")]
    return True, "Hallo checkpoint: " + "; ".join(parts) + _preparation("hallo", root)


def _preparation(family: str, root: Path) -> str:
    """The input-preparation plan ``generate`` will follow for this folder: each step's model
    found (the original's step runs) or missing (its fallback, and why)."""
    from ..pipeline.recipes import plan_preparation

    lines = plan_preparation(family, root).lines()
    return "".join(f"\n       preparation {line}" for line in lines)
