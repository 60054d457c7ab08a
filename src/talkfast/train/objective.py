"""The training objectives, shared by every data source and device.

``ClipExample`` is one training example in pixel space: the reference portrait, the motion frames
that precede the clip, the clip itself, its windowed audio features and the face regions. The
diffusion loss follows sampling exactly: v-prediction on DDIM's zero-terminal-SNR schedule, the
same conditioning path as the pipeline, and Hallo's unconditional branch (no reference tokens,
zero audio tokens, zero face feature, zero identity) for classifier-free-guidance dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..face.masks import MaskSet
from ..models.attention import ItemLayout
from ..models.net import TalkingHeadNet
from ..models.unet import UNetCond
from ..sampling.scheduler import make_scheduler


@dataclass
class ClipExample:
    reference: torch.Tensor  # (3, H, W) in [-1, 1]
    motion: torch.Tensor  # (M, 3, H, W) in [-1, 1]
    frames: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    audio: torch.Tensor  # (F, window, L, D) windowed audio features
    masks: MaskSet
    locator: torch.Tensor  # (3, H, W) FaceLocator input
    identity: torch.Tensor  # (E,) identity embedding


class DiffusionObjective:
    def __init__(self, net: TalkingHeadNet, vae: AutoencoderKL, uncond_prob: float = 0.1):
        self.net, self.vae, self.uncond_prob = net, vae, uncond_prob
        self.alphas = make_scheduler(1).alphas_cumprod.float()
        self.scale = float(getattr(vae.config, "scaling_factor", 1.0))

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent_dist.mean * self.scale

    def loss(self, ex: ClipExample, generator: torch.Generator, uncond: bool | None = None,
             timestep: int | None = None) -> torch.Tensor:
        net = self.net
        dev = next(net.parameters()).device
        if uncond is None:
            uncond = bool(torch.rand((), generator=generator) < self.uncond_prob)
        m = ex.motion.shape[0]
        lat = self.encode(torch.cat([ex.reference[None], ex.motion, ex.frames]).to(dev))
        ref_lat, x0 = lat[: 1 + m], lat[1 + m :].permute(1, 0, 2, 3)[None]  # (1, C, F, h, w)
        t = int(torch.randint(0, len(self.alphas), (), generator=generator)) if timestep is None else timestep
        a = self.alphas[t].to(dev)
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        zt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = a.sqrt() * eps - (1 - a).sqrt() * x0
        identity = torch.zeros_like(ex.identity) if uncond else ex.identity
        ctx = net.imageproj(identity.to(dev)[None])
        net.write_reference(ref_lat, ctx, hallo_tiling=False, grad=True)
        tokens = net.audioproj(ex.audio.to(dev)[None])
        face = net.face_locator(ex.locator.to(dev)[None]).unsqueeze(2)
        if uncond:
            tokens, face = torch.zeros_like(tokens), torch.zeros_like(face)
        masks = tuple([x.to(dev)[None] for x in kind] for kind in (ex.masks.full, ex.masks.face, ex.masks.lip))
        cond = UNetCond(context=ctx, audio=tokens, masks=masks, face_feature=face,
                        layout=ItemLayout((0,), (not uncond,)))
        try:
            pred = net.denoise(zt, torch.tensor([t], device=dev), cond)
        finally:
            net.clear_reference()
        return F.mse_loss(pred.float(), target.float())


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> torch.Tensor:
    """Reconstruction (L1 + MSE) of a batch of frames in [-1, 1] plus a small KL term."""
    post = vae.encode(pixels).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(pixels.device)
    rec = vae.decode(z).sample
    return F.l1_loss(rec, pixels) + F.mse_loss(rec, pixels) + kl_weight * post.kl().mean()
