"""Continuity across clips of a generated video: mean frame-to-frame change at clip boundaries vs
inside clips (talkfast.eval.metrics.clip_boundary_ratio).

    python scripts/clip_boundaries.py out.mp4 [--clip-frames 16]
"""

from __future__ import annotations

import argparse
import json

import imageio_ffmpeg
import numpy as np
import torch

from talkfast.eval.metrics import clip_boundary_ratio


def read_frames(path: str) -> torch.Tensor:
    """Every frame of ``path`` as (N, 3, H, W) floats in [0, 1]."""
    reader = imageio_ffmpeg.read_frames(path)
    width, height = next(reader)["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--clip-frames", type=int, default=16, help="frames per generated clip (default 16)")
    args = ap.parse_args()
    result = clip_boundary_ratio(read_frames(args.video), args.clip_frames)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
