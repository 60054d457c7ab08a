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
    # Optional VAE latents of [reference, motion..., frames...] (1 + M + F, C, h, w), already scaled;
    # a data source that caches them saves the encoder pass on every step.
    latents: torch.Tensor | None = None


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Scaled posterior means of frames (N, 3, H, W) in [-1, 1], in chunks of ``chunk`` frames."""
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    dev = next(vae.parameters()).device
    return torch.cat([vae.encode(p.to(dev)).latent_dist.mean * scale for p in pixels.split(chunk)])


class DiffusionObjective:
    """``lip_weight`` w scales the loss inside the lip region by (1 + w): the mouth covers a few
    latent pixels only, and its motion is the one thing the audio decides.

    ``motion_noise`` s adds Gaussian noise of a random strength in [0, s) (latents have unit
    variance) to the motion-frame latents: in generation they are the model's own previous output,
    never as clean as the encoded ground truth, and a network that trusts them fully copies its
    errors from clip to clip."""

    def __init__(self, net: TalkingHeadNet, vae: AutoencoderKL, uncond_prob: float = 0.1, lip_weight: float = 0.0,
                 motion_noise: float = 0.0):
        self.net, self.vae, self.uncond_prob, self.lip_weight = net, vae, uncond_prob, lip_weight
        self.motion_noise = motion_noise
        self.alphas = make_scheduler(1).alphas_cumprod.float()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, pixels)

    def loss(self, ex: ClipExample, generator: torch.Generator, uncond: bool | None = None,
             timestep: int | None = None) -> torch.Tensor:
        net = self.net
        dev = next(net.parameters()).device
        if uncond is None:
            uncond = bool(torch.rand((), generator=generator) < self.uncond_prob)
        m = ex.motion.shape[0]
        if ex.latents is not None:
            lat = ex.latents.to(dev)
        else:
            lat = self.encode(torch.cat([ex.reference[None], ex.motion, ex.frames]).to(dev))
        ref_lat, x0 = lat[: 1 + m], lat[1 + m :].permute(1, 0, 2, 3)[None]  # (1, C, F, h, w)
        if self.motion_noise and m:  # no extra random draws without it: older runs resume exactly
            strength = self.motion_noise * float(torch.rand((), generator=generator))
            jitter = torch.randn(ref_lat[1:].shape, generator=generator).to(dev, ref_lat.dtype)
            ref_lat = torch.cat([ref_lat[:1], ref_lat[1:] + strength * jitter])
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
        return lip_weighted_mse(pred, target, ex.masks.lip[0].to(dev), self.lip_weight)


def lip_weighted_mse(pred: torch.Tensor, target: torch.Tensor, lip: torch.Tensor, weight: float) -> torch.Tensor:
    """MSE over (..., h, w) latents with (1 + ``weight``) inside the flattened lip mask ``lip``
    (h * w,), normalised by the mean weight so that a uniform error costs what plain MSE does."""
    err = (pred.float() - target.float()) ** 2
    if not weight:
        return err.mean()
    h, w = err.shape[-2:]
    wmap = 1.0 + weight * lip.to(err.device, torch.float32).reshape(h, w)
    return (err * wmap).mean() / wmap.mean()


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> torch.Tensor:
    """Reconstruction (L1 + MSE) of a batch of frames in [-1, 1] plus a small KL term."""
    post = vae.encode(pixels).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(pixels.device)
    rec = vae.decode(z).sample
    return F.l1_loss(rec, pixels) + F.mse_loss(rec, pixels) + kl_weight * post.kl().mean()


def decoder_loss(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Reconstruction (L1 + MSE) from the encoder's posterior mean, with no gradient into the encoder."""
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean
    rec = vae.decode(z).sample
    return F.l1_loss(rec, pixels) + F.mse_loss(rec, pixels)
