"""Time one denoising-UNet call (clip_frames x CFG 2) of a preset with random weights.

    .venv/bin/python benchmarks/unet_call.py --preset small [--device cpu] [--dtype fp32]
"""

import argparse
import time

import torch

from talkfast.models.attention import ItemLayout
from talkfast.models.config import get_preset
from talkfast.models.loading import build_random
from talkfast.models.unet import UNetCond


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cfg = get_preset(args.preset)
    net, _ = build_random(cfg)
    net = net.to(args.device, dt)
    u, lat, f = cfg.unet, cfg.latent_size, cfg.clip_frames
    kw = dict(device=args.device, dtype=dt)
    net.write_reference(torch.randn(1 + cfg.motion_frames, cfg.latent_channels, lat, lat, **kw),
                        torch.randn(2, cfg.image_tokens, u.cross_attention_dim, **kw))
    cond = UNetCond(
        context=torch.randn(2, cfg.image_tokens, u.cross_attention_dim, **kw),
        audio=torch.randn(2, f, cfg.audio_tokens, u.audio_attention_dim, **kw),
        masks=tuple([torch.rand(2, (lat // 2**i) ** 2, **kw) for i in range(u.num_levels)] for _ in range(3)),
        face_feature=torch.randn(2, u.block_out_channels[0], 1, lat, lat, **kw),
        layout=ItemLayout.cfg(1, True))
    x = torch.randn(2, cfg.latent_channels, f, lat, lat, **kw)
    t = torch.tensor([500, 500], device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for _ in range(2):
            net.denoise(x, t, cond)
        sync()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            net.denoise(x, t, cond)
            sync()
            times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{args.preset} {args.device} {args.dtype}: median {times[len(times) // 2]:.3f} s per UNet call "
          f"({f} frames x CFG 2, {lat}x{lat} latents, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
