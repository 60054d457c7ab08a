"""Training loops with periodic checkpoints and exact resume (same code on CPU and GPU)."""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL

from ..io.records import Anything, Int, List, MapOf, Num, Obj, Where, checked, read_json
from ..models.net import TalkingHeadNet
from .objective import ClipExample, DiffusionObjective, decoder_loss, vae_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 100
    batch: int = 1  # examples per optimizer step (accumulated)
    grad_clip: float = 1.0
    uncond_prob: float = 0.1
    lip_weight: float = 0.0  # extra loss weight inside the lip region (network only)
    clip_frames: int | None = None  # frames per training clip (network only; None: the model's)
    motion_noise: float = 0.0  # max noise strength on the motion-frame latents (network only)
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    run_steps: int | None = None  # stop after this many steps in this invocation (resume later)


def _lr(cfg: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps)))))


def _is_tensor(v) -> bool:
    return isinstance(v, torch.Tensor)


# What _fit writes (and _store_scaling_factor adds); checked on every read. The state dicts are
# left to load_state_dict, which checks them against the module and optimizer.
CHECKPOINT = Obj({
    "model": Where(lambda v: all(isinstance(k, str) and _is_tensor(t) for k, t in v.items()),
                   "a state dict (names -> tensors)", MapOf(Anything())),
    "opt": Obj({"state": Anything(), "param_groups": List(Anything())}, required=("state", "param_groups")),
    "rng": Where(lambda v: _is_tensor(v) and v.dtype == torch.uint8 and v.dim() == 1, "a generator state (uint8 tensor)"),
    "history": List(Num()), "step": Int(0), "config": MapOf(Anything()), "seconds": Num(0.0),
    "scaling_factor": Num(0.0, above=True),
}, required=("model",))


def load_checkpoint(path: str | Path, need: tuple[str, ...] = ()) -> dict:
    """A run-folder checkpoint read with ``weights_only=True``: tensors, numbers, strings, lists
    and dicts only (model, optimizer and RNG state are all of that form). A file that needs any
    other object (a pickle that would call code) is refused with a :class:`CheckpointError`, so a
    planted ``*_ckpt.pt`` cannot run anything. Its entries are then checked against
    :data:`CHECKPOINT` (``need``: entries that must be there besides ``model``): a missing or
    mistyped one (``step`` not an integer, a ``history`` of strings, a NaN) is a
    :class:`CheckpointError` naming the file and the entry."""
    from ..errors import CheckpointError

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} not found") from err
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a plain talkfast training checkpoint (it holds objects other "
                              f"than tensors and numbers; refused, nothing in it was run): {first}") from err
    except Exception as err:  # truncated, corrupt, not a torch file
        raise CheckpointError(f"cannot read the training checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a talkfast training checkpoint (no 'model' entry)")
    spec = Obj(CHECKPOINT.fields, ("model", *need), extra=True)  # extra: entries a newer talkfast adds
    checked(state, spec, file=path, error=CheckpointError, what="the training checkpoint",
            hint="it was not written by talkfast train, or was damaged")
    return state  # as loaded (the state dicts keep their type and metadata)


# <name>_train.json, the summary _fit writes beside the checkpoint (export copies it into the card)
SUMMARY = Obj({"steps": Int(0), "of": Int(1), "final_loss": Num(), "first_loss": Num(), "seconds": Num(0.0),
               "config": MapOf(Anything())}, required=("steps", "of", "final_loss", "first_loss", "seconds"),
              extra=True)


def read_summary(path: str | Path) -> dict:
    """A run's ``<name>_train.json`` checked against :data:`SUMMARY` (CheckpointError naming the
    file and the field otherwise)."""
    from ..errors import CheckpointError

    data = read_json(path, error=CheckpointError, what="the training summary")
    return checked(data, SUMMARY, file=path, error=CheckpointError, what="the training summary",
                   hint="it was not written by talkfast train, or was damaged")


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _fit(name: str, module: torch.nn.Module, params, loss_fn: Callable[[torch.Generator], torch.Tensor],
         cfg: TrainConfig, out_dir: Path, resume: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / f"{name}_ckpt.pt"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    start, before = 0, 0.0  # steps and seconds of earlier invocations
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, need=("opt", "rng", "history", "step"))
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        history, start, before = state["history"], state["step"], float(state.get("seconds", 0.0))
        log.info("%s: resumed at step %d", name, start)
    module.train()
    t0 = time.perf_counter()
    stop = cfg.steps if cfg.run_steps is None else min(cfg.steps, start + cfg.run_steps)
    for step in range(start, stop):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.batch):
            loss = loss_fn(gen) / cfg.batch
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        history.append(total)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            recent = history[-cfg.log_every:]
            log.info("%s step %d/%d loss %.4f (%.2f s/step)", name, done, cfg.steps, sum(recent) / len(recent),
                     (time.perf_counter() - t0) / (done - start))
        if done % cfg.checkpoint_every == 0 or done in (cfg.steps, stop):
            _save(ckpt, {"model": module.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(),
                         "history": history, "step": done, "config": asdict(cfg),
                         "seconds": before + time.perf_counter() - t0})
    module.eval()
    summary = {"steps": stop, "of": cfg.steps, "final_loss": sum(history[-50:]) / max(1, len(history[-50:])),
               "first_loss": sum(history[:50]) / max(1, len(history[:50])),
               "seconds": before + time.perf_counter() - t0}  # over every invocation that has a record
    (out_dir / f"{name}_train.json").write_text(json.dumps({**summary, "config": asdict(cfg)}, indent=2))
    return summary


def train_vae(vae: AutoencoderKL, frames: Callable[[torch.Generator], torch.Tensor], cfg: TrainConfig,
              out_dir: str | Path, resume: bool = True, decoder_only: bool = False) -> dict:
    """``frames(gen)`` returns a batch (N, 3, H, W) in [-1, 1] on the VAE's device.

    ``decoder_only``: fine-tune the decoder (and ``post_quant_conv``) on the frozen encoder's
    posterior means; the latent space, and so any network trained on it, stays valid. Its
    checkpoint is ``vae_decoder_ckpt.pt``."""
    if decoder_only:
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        vae.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        out = _fit("vae_decoder", vae, params, lambda g: decoder_loss(vae, frames(g)), cfg, Path(out_dir), resume)
    else:
        vae.requires_grad_(True)
        out = _fit("vae", vae, list(vae.parameters()), lambda g: vae_loss(vae, frames(g), g), cfg, Path(out_dir), resume)
    vae.requires_grad_(False)
    return out


def train_net(net: TalkingHeadNet, vae: AutoencoderKL, examples: Callable[[torch.Generator], ClipExample],
              cfg: TrainConfig, out_dir: str | Path, resume: bool = True) -> dict:
    """``examples(gen)`` returns one :class:`ClipExample`; the VAE stays frozen."""
    vae.requires_grad_(False).eval()
    net.requires_grad_(True)
    obj = DiffusionObjective(net, vae, cfg.uncond_prob, cfg.lip_weight, cfg.motion_noise)
    out = _fit("net", net, list(net.parameters()), lambda g: obj.loss(examples(g), g), cfg, Path(out_dir), resume)
    net.requires_grad_(False)
    return out
