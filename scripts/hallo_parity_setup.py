"""What both sides of ``hallo_parity.py`` are given, and how their runs are observed.

The tiny ``hallo``-preset configuration, the random weights, the tiny VAE, the bundled synthetic
portrait, the random inputs of the single UNet call and of the clip loop, the noise-drawing
patches, and :class:`Recorder`, which keeps what wrapped methods were called with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import torch
from diffusers import AutoencoderKL
from PIL import Image

from talkfast.examples import EXAMPLES_DIR
from talkfast.face.detect import Box, FaceRegions
from talkfast.models.config import HALLO, ModelConfig
from talkfast.models.loading import small_vae_config
from talkfast.models.net import TalkingHeadNet

SD_SCALE = 0.18215  # the latent scale Hallo's pipeline hard-codes (sd-vae-ft-mse's scaling_factor)


# ----------------------------------------------------------------------------- configuration
def parity_config(clip_frames: int = 4) -> ModelConfig:
    """The ``hallo`` preset (its code path and switches) at a tiny width.

    Widths are multiples of 32 because Hallo's motion module builds its GroupNorm with 32 groups
    whatever the UNet's ``norm_num_groups`` (``hallo/models/motion_module.py``,
    ``TemporalTransformer3DModel``); 8 spatial and 8 temporal heads as in Hallo's configs; the time
    widths follow Hallo's rule (projection = first width, embedding = 4x that).
    """
    unet = dataclasses.replace(
        HALLO.unet,
        block_out_channels=(32, 64, 64, 64),
        heads=8,
        norm_groups=32,
        cross_attention_dim=24,
        audio_attention_dim=40,
        time_proj_dim=32,
        time_embed_dim=128,
        motion_heads=8,
    )
    return HALLO.replace(
        unet=unet,
        image_size=128,  # 16x16 latents: 16, 8, 4, 2 at the four levels
        clip_frames=clip_frames,
        motion_frames=2,
        face_locator_channels=(8, 16, 16, 32),
        image_embed_dim=12,
        image_tokens=3,
        audio_window=5,
        audio_layers=2,
        audio_feature_dim=16,
        audio_hidden=32,
        audio_tokens=3,
    )


# ----------------------------------------------------------------------------- weights
def random_state(net: TalkingHeadNet, seed: int) -> dict:
    """Random fp64 weights for every parameter (zero-initialised layers would hide wiring): matrices
    and kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2). Buffers (the
    motion modules' positional tables) stay talkfast's."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().to(torch.float64).clone() for k, v in net.state_dict().items()}
    names = {n for n, _ in net.named_parameters()}
    for k in sorted(names):
        p = state[k]
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if p.ndim >= 2:
            state[k] = r / math.sqrt(p[0].numel())
        elif k.endswith(".weight"):  # GroupNorm / LayerNorm scale
            state[k] = 1.0 + 0.1 * r
        else:
            state[k] = 0.1 * r
    return state


def tiny_vae(cfg: ModelConfig, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**dict(small_vae_config(cfg), scaling_factor=SD_SCALE)).double()
    # random decoder output scaled down, so that decoded frames stay mostly inside [-1, 1]
    # (the clamp to [0, 1] would otherwise flatten the motion frames)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.3)
    return vae.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- inputs
def portrait_inputs(size: int):
    meta = json.loads((EXAMPLES_DIR / "synthetic.json").read_text())
    image = Image.open(EXAMPLES_DIR / "synthetic_portrait.png").convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    src = meta["corpus"]["size"]
    regions = FaceRegions(face=Box(*meta["face_box"]), lip=Box(*meta["lip_box"]), image_size=(src, src),
                          detected=True, method="synthetic.json").rescaled((size, size))
    return image, regions


def unet_call_inputs(cfg: ModelConfig, seed: int, dt: torch.dtype, dev: torch.device) -> dict:
    """The random inputs of comparison (a), drawn in fp64 and cast to ``dt``."""
    g = torch.Generator().manual_seed(seed + 1)
    f, lat, s = cfg.clip_frames, cfg.latent_size, 1 + cfg.motion_frames
    u = cfg.unet
    levels = [lat // 2**i for i in range(u.num_levels)]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dev, dt)

    ref = rnd(s, u.in_channels, lat, lat)  # reference latent + 2 different motion-frame latents
    ctx = rnd(2, cfg.image_tokens, u.cross_attention_dim)  # [uncond, cond] image contexts
    x = rnd(1, u.in_channels, f, lat, lat)
    audio = rnd(2, f, cfg.audio_tokens, u.audio_attention_dim)
    face = rnd(2, u.block_out_channels[0], 1, lat, lat)
    masks = [[torch.rand(n * n, generator=g, dtype=torch.float64).to(dev, dt) for n in levels] for _ in range(3)]
    return {"ref": ref, "ctx": ctx, "x": x, "audio": audio, "face": face, "masks": masks, "frames": f,
            "t": torch.tensor(701, device=dev),
            "motion_scale": (0.9, 1.1, 1.3)}  # pose, face, lip: distinct, so a swapped branch would show


def unet_call_inputs_as(inp: dict, dtype: torch.dtype) -> dict:
    """The same input values in another dtype (for the fp64 reference: exact, as every value of a
    lower precision is an fp64 value)."""
    out = dict(inp)
    for k in ("ref", "ctx", "x", "audio", "face"):
        out[k] = inp[k].to(dtype)
    out["masks"] = [[m.to(dtype) for m in kind] for kind in inp["masks"]]
    return out


def clip_inputs(cfg: ModelConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame audio features for 2 clips (fp32, like wav2vec2's) and the identity vector of (b)."""
    g = torch.Generator().manual_seed(seed + 2)
    n = 2 * cfg.clip_frames
    feats = torch.randn(n, cfg.audio_layers, cfg.audio_feature_dim, generator=g)
    identity = torch.randn(cfg.image_embed_dim, generator=g)
    return feats, identity


# ----------------------------------------------------------------------------- noise patches
@contextlib.contextmanager
def noise_in_dtype(dtype: torch.dtype | None):
    """While active, ``torch.randn(..., generator=g)`` without a dtype draws in ``dtype`` (what
    diffusers' ``randn_tensor`` does for Hallo's latents). ``None``: no change."""
    if dtype is None:
        yield
        return
    orig = torch.randn

    def randn(*size, generator=None, dtype=None, **kw):
        if generator is not None and dtype is None:
            dtype = noise_dtype
        return orig(*size, generator=generator, dtype=dtype, **kw)

    noise_dtype = dtype
    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = orig


@contextlib.contextmanager
def noise_drawn_in(dtype: torch.dtype | None):
    """While active, ``torch.randn(..., generator=g)`` draws in ``dtype`` and casts the draw to the
    dtype asked for. For Hallo's fp64 reference: its ``randn_tensor`` then yields the very noise
    of the run at ``dtype`` (a CPU generator gives other numbers in fp64). ``None``: no change."""
    if dtype is None:
        yield
        return
    orig = torch.randn

    def randn(*size, generator=None, dtype=None, **kw):
        if generator is None:
            return orig(*size, dtype=dtype, **kw)
        out = orig(*size, generator=generator, dtype=draw_dtype, **kw)
        return out.to(dtype if dtype is not None else torch.get_default_dtype())

    draw_dtype = dtype
    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = orig


# ----------------------------------------------------------------------------- observation
class Recorder:
    """Wraps bound methods of an object, keeping what they were called with / returned."""

    def __init__(self):
        self.calls: dict[str, list] = {}

    def wrap(self, obj, name: str, keep, key: str | None = None):
        orig = getattr(obj, name)
        calls = self.calls.setdefault(key or name, [])

        def wrapped(*args, **kw):
            out = orig(*args, **kw)
            calls.append(keep(args, out))
            return out

        setattr(obj, name, wrapped)
