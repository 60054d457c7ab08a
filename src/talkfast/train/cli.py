"""``talkfast train``: the autoencoder, then the network, on the synthetic corpus; resumable.

    talkfast train vae --data CORPUS --out RUN [--steps N] [--batch B] [--lr LR] [--run-steps K]
    talkfast train net --data CORPUS --out RUN [--steps N] [--lr LR] [--run-steps K]
    talkfast train export --out RUN [--to FOLDER]      # talkfast model folder (net.safetensors, vae/)

RUN holds the checkpoints (vae_ckpt.pt, net_ckpt.pt); running a command again resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the embedded model on the synthetic corpus (resumable)")
    sub = p.add_subparsers(dest="train_command", required=True)
    for name, steps, lr, batch in (("vae", 3000, 2e-4, 8), ("net", 20000, 1e-4, 1)):
        s = sub.add_parser(name, help=f"train the {'autoencoder' if name == 'vae' else 'ReferenceNet + UNet3D'}")
        s.add_argument("--data", required=True, help="corpus folder (talkfast data build)")
        s.add_argument("--out", required=True, help="run folder for checkpoints")
        s.add_argument("--model", default="small", help="model preset (default small)")
        s.add_argument("--steps", type=int, default=steps)
        s.add_argument("--run-steps", type=int, default=None, help="stop after this many steps now; resume later")
        s.add_argument("--lr", type=float, default=lr)
        s.add_argument("--batch", type=int, default=batch)
        s.add_argument("--device", default="auto")
        s.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export", help="write the trained model as a talkfast model folder")
    e.add_argument("--out", required=True, help="run folder")
    e.add_argument("--model", default="small")
    e.add_argument("--to", default=None, help="destination (default: RUN/model)")
    return p


def _device(name: str) -> torch.device:
    from ..pipeline.loader import resolve_device

    return resolve_device(name)


def _models(preset: str, run: Path, device, need_vae: bool):
    from ..models.loading import build_random

    net, vae = build_random(preset)
    vae_ckpt = run / "vae_ckpt.pt"
    if need_vae:
        if not vae_ckpt.exists():
            from ..errors import CheckpointError

            raise CheckpointError(f"{vae_ckpt} not found: run 'talkfast train vae' with the same --out first")
        vae.load_state_dict(torch.load(vae_ckpt, map_location="cpu", weights_only=False)["model"])
    return net.to(device), vae.to(device)


def run(args) -> int:
    from ..models.config import get_preset
    from .data import CorpusClips
    from .loop import TrainConfig, train_net, train_vae

    out = Path(args.out)
    if args.train_command == "export":
        return _export(args)
    dev = _device(args.device)
    cfg = get_preset(args.model)
    clips = CorpusClips(args.data, cfg)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, batch=args.batch if args.train_command == "net" else 1,
                       seed=args.seed, run_steps=args.run_steps)
    logging.getLogger("talkfast").setLevel(logging.INFO)
    if args.train_command == "vae":
        _, vae = _models(args.model, out, dev, need_vae=False)
        res = train_vae(vae, lambda g: clips.frame_batch(g, args.batch).to(dev), tcfg, out)
    else:
        net, vae = _models(args.model, out, dev, need_vae=True)
        res = train_net(net, vae, clips.example, tcfg, out)
    print(json.dumps(res, indent=2))
    return 0


def _export(args) -> int:
    from ..models.loading import save_embedded

    run_dir = Path(args.out)
    net, vae = _models(args.model, run_dir, "cpu", need_vae=True)
    state = torch.load(run_dir / "net_ckpt.pt", map_location="cpu", weights_only=False)
    net.load_state_dict(state["model"])
    card = {"trained_steps": state["step"], "train_config": state.get("config"),
            "final_loss": sum(state["history"][-50:]) / max(1, len(state["history"][-50:]))}
    dest = save_embedded(net, vae, args.to or run_dir / "model", card)
    print(f"wrote {dest}")
    return 0
