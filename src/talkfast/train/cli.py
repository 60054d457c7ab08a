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

from ..pipeline import MOTION_SOURCES

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
        if name == "vae":
            s.add_argument("--crop", type=int, default=None,
                           help="train on random CROP x CROP windows of the frames (multiple of 8; cheaper)")
            s.add_argument("--decoder-only", action="store_true",
                           help="fine-tune only the decoder of the trained VAE (the latent space, and a network "
                                "trained on it, stay valid); checkpoint vae_decoder_ckpt.pt, used by export")
        else:
            s.add_argument("--clip-frames", type=int, default=None,
                           help="frames per training clip (default: the model's clip length)")
            s.add_argument("--lip-weight", type=float, default=2.0,
                           help="extra loss weight inside the lip region (default 2; 0 = plain MSE)")
            s.add_argument("--motion-noise", type=float, default=0.0,
                           help="noise of a random strength up to this on the motion-frame latents, so the "
                                "network does not copy its own errors from clip to clip (default 0; e.g. 0.25)")
    e = sub.add_parser("export", help="write the trained model as a talkfast model folder")
    e.add_argument("--out", required=True, help="run folder")
    e.add_argument("--model", default="small")
    e.add_argument("--to", default=None, help="destination (default: RUN/model)")
    e.add_argument("--data", default=None, help="the training corpus: its build settings go into the model card")
    e.add_argument("--half", action="store_true", help="store the network in float16 (half the size)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace a model folder's files that talkfast did not export (a model.json with other keys, "
                        "e.g. tuned settings or your own); never the run's checkpoints or the corpus")
    e.add_argument("--motion-source", choices=MOTION_SOURCES, default=None,
                   help="the model's default for generate --motion-source, stored in model.json (measure with "
                        "talkfast quality --motion-source first)")
    return p


def _device(name: str) -> torch.device:
    from ..pipeline.loader import resolve_device

    return resolve_device(name)


def _load_into(module, state, path, preset) -> None:
    from ..errors import CheckpointError

    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} does not match the {preset!r} model (was it trained with another "
                              f"--model?): {first}") from None


def _models(preset: str, run: Path, device, need_vae: bool, decoder: bool = True):
    from ..models.loading import build_random
    from .loop import load_checkpoint

    net, vae = build_random(preset)
    vae_ckpt = run / "vae_ckpt.pt"
    if need_vae:
        if not vae_ckpt.exists():
            from ..errors import CheckpointError

            raise CheckpointError(f"{vae_ckpt} not found: run 'talkfast train vae' with the same --out first")
        state = load_checkpoint(vae_ckpt)
        _load_into(vae, state["model"], vae_ckpt, preset)
        if "scaling_factor" in state:
            vae.register_to_config(scaling_factor=float(state["scaling_factor"]))
        tuned = run / "vae_decoder_ckpt.pt"
        if decoder and tuned.exists():  # a fine-tuned decoder on the same encoder
            _load_into(vae, load_checkpoint(tuned)["model"], tuned, preset)
    return net.to(device), vae.to(device)


def run(args) -> int:
    from ..models.config import get_preset
    from .data import CorpusClips
    from .loop import TrainConfig, train_net, train_vae

    out = Path(args.out)
    if args.train_command == "export":
        return _export(args)
    from ..errors import InputError
    from .objective import encode_latents

    _check_numbers(args)
    dev = _device(args.device)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)  # tiny gradients as denormals slow CPU kernels many times over
    cfg = get_preset(args.model)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, batch=args.batch if args.train_command == "net" else 1,
                       seed=args.seed, run_steps=args.run_steps, lip_weight=getattr(args, "lip_weight", 0.0),
                       clip_frames=getattr(args, "clip_frames", None), motion_noise=getattr(args, "motion_noise", 0.0))
    logging.getLogger("talkfast").setLevel(logging.INFO)
    if args.train_command == "vae":
        if args.crop is not None and (args.crop % cfg.vae_scale_factor or args.crop <= 0):
            raise InputError(f"--crop must be a positive multiple of {cfg.vae_scale_factor}, got {args.crop}")
        clips = CorpusClips(args.data, cfg)
        _, vae = _models(args.model, out, dev, need_vae=args.decoder_only)
        res = train_vae(vae, lambda g: clips.frame_batch(g, args.batch, args.crop).to(dev), tcfg, out,
                        decoder_only=args.decoder_only)
        if not args.decoder_only:
            res["scaling_factor"] = _store_scaling_factor(vae, clips, out / "vae_ckpt.pt", dev)
    else:
        if args.clip_frames is not None and args.clip_frames < 1:
            raise InputError(f"--clip-frames must be at least 1, got {args.clip_frames}")
        net, vae = _models(args.model, out, dev, need_vae=True)
        clips = CorpusClips(args.data, cfg, clip_frames=args.clip_frames, encoder=lambda x: encode_latents(vae, x))
        res = train_net(net, vae, clips.example, tcfg, out)
    print(json.dumps(res, indent=2))
    return 0


def _check_numbers(args) -> None:
    """Every number finite and in range before any work (a NaN learning rate trains nothing)."""
    import math

    from ..errors import InputError

    checks = [("--steps", args.steps, 1, None), ("--batch", args.batch, 1, None), ("--lr", args.lr, 0.0, 1.0),
              ("--lip-weight", getattr(args, "lip_weight", 0.0), 0.0, 100.0),
              ("--motion-noise", getattr(args, "motion_noise", 0.0), 0.0, 1.0)]
    if args.run_steps is not None:
        checks.append(("--run-steps", args.run_steps, 1, None))
    for name, value, lo, hi in checks:
        if not (math.isfinite(value) and value >= lo and (hi is None or value <= hi)) or (name == "--lr" and value <= 0):
            span = f"> {lo:g}" if name == "--lr" else f">= {lo:g}"
            raise InputError(f"{name} must be {span}{'' if hi is None else f' and <= {hi:g}'}, got {value!r}")


def _store_scaling_factor(vae, clips, ckpt, dev, frames: int = 64) -> float:
    """1 / std of the latents of random whole frames, kept with the VAE checkpoint: the diffusion
    model then sees latents of unit variance (as SD's 0.18215 does for its VAE)."""
    from .loop import _save, load_checkpoint
    from .objective import encode_latents

    vae.register_to_config(scaling_factor=1.0)
    lat = encode_latents(vae.eval(), clips.frame_batch(torch.Generator().manual_seed(1234), frames).to(dev))
    factor = float(1.0 / lat.float().std().clamp_min(1e-6))
    state = load_checkpoint(ckpt)
    state["scaling_factor"] = factor
    _save(ckpt, state)
    vae.register_to_config(scaling_factor=factor)
    return factor


def model_card(card: dict, net, vae) -> str:
    """A model card (markdown) from the exported model's facts: sizes, corpus, training."""
    def n_params(m) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"

    cfg = net.cfg
    tc = card.get("train_config") or {}
    dtype = card.get("weights_dtype", "float32")
    lines = [f"# talkfast `{cfg.name}` model", "",
             f"A Hallo-style talking-head model (ReferenceNet + denoising UNet with reference attention, audio "
             f"cross-attention and temporal motion modules; {cfg.image_size}x{cfg.image_size} video, "
             f"{cfg.latent_size}x{cfg.latent_size} latents, {cfg.audio_features} audio features, clips of "
             f"{cfg.clip_frames} frames chained by {cfg.motion_frames} motion frames), trained from scratch by "
             "`talkfast train` on talkfast's synthetic corpus. It only knows that corpus's procedural cartoon "
             "faces and espeak-ng voices: it is a test bed for the accelerators and an offline default, not a "
             "model for real photographs.", "",
             "| part | parameters | stored as |", "|---|---|---|",
             f"| network (`net.safetensors`) | {n_params(net)} | {dtype} |",
             f"| autoencoder (`vae/`, diffusers AutoencoderKL) | {n_params(vae)} | float32 |", ""]
    corpus = card.get("corpus")
    if corpus:
        lines += ["## Corpus", "",
                  f"`talkfast data build --identities {corpus['identities']} --sentences {corpus['sentences']} "
                  f"--seed {corpus['seed']} --size {corpus['size']}` (test fraction {corpus.get('test_fraction')}): "
                  "identities and sentences of the test split never appear in training.", ""]
    lines += ["## Training", "", "| stage | steps | first loss | final loss | seconds |", "|---|---|---|---|---|"]
    for part, label in (("vae_training", "autoencoder"), ("vae_decoder_training", "decoder fine-tuning (frozen encoder)"),
                        ("net_training", "network (v-prediction, zero-terminal-SNR DDIM schedule)")):
        t = card.get(part)
        if t:
            lines.append(f"| {label} | {t['steps']} of {t['of']} | {t['first_loss']:.4f} | {t['final_loss']:.4f} | "
                         f"{t['seconds']:.0f} |")
    lines += ["", f"Network: clips of {tc.get('clip_frames') or cfg.clip_frames} frames, learning rate {tc.get('lr')}, "
              f"batch {tc.get('batch')}, lip-region loss weight "
              f"{tc.get('lip_weight')}, unconditional dropout {tc.get('uncond_prob')}; latent scaling factor "
              f"{card.get('vae_scaling_factor', 1.0):.4f} (1 / std of the encoder's latents). Seconds are wall time "
              "on the machine that trained it (the run may span several resumed invocations).", "",
              "## Quality", "",
              "Measured on held-out identities and sentences by `talkfast quality` (docs/QUALITY.md in the "
              "repository): PSNR/SSIM against ground truth, lip-sync correlation with shuffled-audio controls, "
              "identity consistency, and a contact sheet.", ""]
    return "\n".join(lines)


def _export(args) -> int:
    from ..errors import CheckpointError
    from .loop import load_checkpoint

    run_dir = Path(args.out)
    dest = Path(args.to) if args.to else run_dir / "model"
    check_export(dest, run_dir, args.data, overwrite=args.overwrite)  # before any work: nothing lost, nothing half-written
    net, vae = _models(args.model, run_dir, "cpu", need_vae=True)
    net_ckpt = run_dir / "net_ckpt.pt"
    if not net_ckpt.exists():
        raise CheckpointError(f"{net_ckpt} not found: run 'talkfast train net' with the same --out first")
    state = load_checkpoint(net_ckpt, need=("step", "history"))
    _load_into(net, state["model"], net_ckpt, args.model)
    card = {"trained_steps": state["step"], "train_config": state.get("config"),
            "final_loss": sum(state["history"][-50:]) / max(1, len(state["history"][-50:])),
            "first_loss": sum(state["history"][:50]) / max(1, len(state["history"][:50])),
            "vae_scaling_factor": float(vae.config.scaling_factor)}
    if args.motion_source is not None:
        card["motion_source"] = args.motion_source
    from .loop import read_summary

    for part in ("vae", "vae_decoder", "net"):
        summary = run_dir / f"{part}_train.json"
        if summary.exists():
            card[f"{part}_training"] = read_summary(summary)
    if args.data:
        from ..data.corpus import read_manifest

        m = read_manifest(args.data)
        card["corpus"] = {"identities": m["num_identities"], "sentences": m["sentences_per_identity"],
                          "seed": m["seed"], "size": m["size"], "test_fraction": m["test_fraction"]}
    dest = publish_export(dest, lambda stage: _save_export(stage, net, vae, card, args.half))
    print(f"wrote {dest}")
    return 0


def _save_export(stage: Path, net, vae, card: dict, half: bool) -> None:
    from ..models.loading import save_embedded

    save_embedded(net, vae, stage, card, dtype=torch.float16 if half else None)
    saved = json.loads((stage / "model.json").read_text())
    (stage / "MODEL_CARD.md").write_text(model_card(saved, net, vae))


#: The files ``train export`` writes into its folder.
EXPORT_FILES = ("model.json", "MODEL_CARD.md", "net.safetensors", "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors")
#: The keys of an exported model.json (:func:`_export`'s card); one with any other key (tuned
#: settings, the user's own) is not replaced without --overwrite.
EXPORT_KEYS = frozenset({"preset", "weights_dtype", "trained_steps", "train_config", "final_loss", "first_loss",
                         "vae_scaling_factor", "motion_source", "vae_training", "vae_decoder_training",
                         "net_training", "corpus"})


def exported_by_talkfast(folder: Path) -> bool:
    """Whether ``folder`` holds a model folder exactly as ``train export`` wrote it: its
    model.json a JSON object naming a ``preset`` with no keys but :data:`EXPORT_KEYS` (``talkfast
    tune`` adds ``tuned``, which a new export would lose: that folder is not replaced silently)."""
    from ..io.write_rule import json_object

    meta = json_object(folder / "model.json")
    return meta is not None and "preset" in meta and set(meta) <= EXPORT_KEYS


def check_export(dest: Path, run_dir: Path, data, *, overwrite: bool = False) -> list[Path]:
    """The write rule (:func:`talkfast.io.write_rule.check_writes`) for ``train export --to``:
    none of :data:`EXPORT_FILES` may be an input (the run's checkpoints and summaries, the corpus),
    even with ``overwrite``; an existing one is replaced without ``overwrite`` only when the folder
    is a plain export (:func:`exported_by_talkfast`)."""
    from ..io.write_rule import check_writes

    reads = [run_dir / f"{part}{end}" for part in ("vae", "vae_decoder", "net") for end in ("_ckpt.pt", "_train.json")]
    dest = Path(dest).expanduser()
    return check_writes([dest / name for name in EXPORT_FILES], inputs=[*reads, data], overwrite=overwrite,
                        ours=lambda _p: exported_by_talkfast(dest), create=False,  # no folder before the load
                        mark=f"{dest / 'model.json'} is not a plain 'talkfast train export' model.json: it has "
                             "other keys (tuned settings?) or none")


def publish_export(dest: Path, save) -> Path:
    """Run ``save(stage)`` into a hidden staging folder beside ``dest``, then move each file it
    wrote into ``dest`` with an atomic rename (other files already in ``dest`` stay); on any error
    the staging folder is removed and ``dest`` keeps what it had."""
    import os
    import shutil
    import tempfile

    from ..errors import OutputError

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.export-"))
    try:
        save(stage)
        for src in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = dest / src.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
    except OSError as err:
        raise OutputError(f"Cannot write the model folder {dest}: {err.strerror or err}.") from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest
