"""``talkfast doctor``: what this machine offers talkfast, and why something is missing."""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import subprocess


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
        def ckpt():
            from ..models.loading import find_hallo_checkpoint

            p = find_hallo_checkpoint(checkpoint)
            return True, f"net {p.net}, vae {p.vae}, wav2vec2 {p.wav2vec}"

        essential &= _check(f"checkpoint {checkpoint}", ckpt)
    return 0 if essential else 1
