"""talkfast's side of ``hallo_parity.py``: the single UNet call and the clip loop of
``TalkingHeadPipeline.generate``, with the script's two patches (fixed audio features, the identity
vector Hallo gets) and recorders on what is compared."""

from __future__ import annotations

import copy

import numpy as np
import torch

from talkfast.audio.features import window_features
from talkfast.io.audio import Audio
from talkfast.models.attention import ItemLayout
from talkfast.models.net import TalkingHeadNet
from talkfast.models.unet import UNetCond
from talkfast.pipeline.generate import GenerateOptions, TalkingHeadPipeline

from hallo_parity_setup import Recorder, noise_in_dtype  # scripts/, on sys.path when a script runs


class FixedAudioFeatures:
    """Stands in for talkfast's ``AudioConditioner``: windows of fixed per-frame features, with the
    same index clamping as ``AudioConditioner.clip`` and talkfast's ``window_features``."""

    def __init__(self, feats: torch.Tensor, radius: int = 2):
        self.feats, self.radius = feats, radius

    def clip(self, audio, start: int, frames: int, fps=None) -> torch.Tensor:
        total, r = self.feats.shape[0], self.radius
        idx = torch.arange(start - r, start + frames + r).clamp(0, total - 1)
        return window_features(self.feats.index_select(0, idx), r)[r : r + frames]


@torch.no_grad()
def talkfast_unet_call(tf: TalkingHeadNet, inp: dict) -> tuple[torch.Tensor, dict]:
    """(a): the ReferenceNet writes the banks, then one denoising call on the CFG batch [uncond, cond].
    Returns the output and the bank each reader held (by layer name)."""
    ctx, masks = inp["ctx"], inp["masks"]
    tf.write_reference(inp["ref"], ctx, hallo_tiling=True)
    banks = {k: v.clone() for k, v in tf.ref_state.banks.items()}
    cond = UNetCond(context=ctx, audio=inp["audio"],
                    masks=tuple([m[None].expand(2, -1) for m in kind] for kind in masks), face_feature=inp["face"],
                    layout=ItemLayout.cfg(1, True), motion_scale=inp["motion_scale"])
    out = tf.denoise(torch.cat([inp["x"], inp["x"]]), inp["t"].expand(2), cond)
    tf.clear_reference()
    return out, banks


def run_talkfast_clips(tf: TalkingHeadNet, vae, cfg, dt, dev, image, regions, identity, feats, steps, guidance, seed,
                       motion_scale, noise64: bool) -> dict:
    """(b): ``TalkingHeadPipeline.generate`` over the whole audio, recording per clip the pixels fed
    to the VAE encoder, the final latents, the raw decoder output and the decoded frames."""
    pipe = TalkingHeadPipeline(tf, copy.deepcopy(vae), FixedAudioFeatures(feats), device=dev, dtype=dt,
                               identity="pixels", source="random:hallo-parity")
    orig_portrait = pipe.portrait
    made = []

    def portrait(*args, **kw):  # Hallo's identity embedding comes from insightface: the same vector here
        por = orig_portrait(*args, **kw)
        por.identity = identity.clone()
        made.append(por)  # handed to Hallo: its pixels, FaceLocator input and masks
        return por

    pipe.portrait = portrait
    rec = Recorder()
    rec.wrap(pipe.vae, "encode", lambda a, out: a[0].detach().clone())  # pixels fed to the encoder
    rec.wrap(pipe, "decode", lambda a, out: a[0].detach().clone())  # final latents of each clip
    rec.wrap(pipe.vae, "decode", lambda a, out: out.sample.detach().clone(), "vae_decode")  # raw decoder output
    frames: list[torch.Tensor] = []
    fps = 25
    n = feats.shape[0]
    sr = 16000
    audio = Audio(np.zeros(n * sr // fps, dtype=np.float32), sr, sr, 1)  # only its length (n frames) is used
    opts = GenerateOptions(steps=steps, guidance=guidance, seed=seed, fps=fps, motion_scale=motion_scale)
    res_opts = pipe.resolve(opts)
    with noise_in_dtype(dt if noise64 else None):
        pipe.generate(image, audio, None, opts, regions=regions, on_clip=frames.append)
    enc = rec.calls["encode"]  # [source], then per clip after the first: [motion pixels]
    m = cfg.motion_frames
    ref_pixels = [torch.cat([enc[0]] * (1 + m))] + [torch.cat([enc[0], e]) for e in enc[1:]]
    dec = rec.calls["decode"]
    f = cfg.clip_frames
    raw = [torch.cat(rec.calls["vae_decode"][c * f : (c + 1) * f]) for c in range(len(dec))]
    return {"frames": frames, "latents": dec, "ref_pixels": ref_pixels, "decoder": raw, "options": res_opts,
            "portrait": made[0]}
