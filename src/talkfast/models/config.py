"""Model configuration: one module tree, sized by a dataclass, with named presets.

The ``hallo`` preset reproduces the SD-1.5-sized Hallo network (its ``net.pth`` loads unchanged);
``tiny`` is for unit tests; ``small`` is the embedded default model trained on the synthetic corpus.
Only the numbers differ between presets, never the code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the reference UNet (2D) and the denoising UNet (3D); both share it."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    # Which down levels carry spatial attention (the up levels mirror it). Hallo: last level none.
    down_attention: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    heads: int = 8
    norm_groups: int = 32
    resnet_eps: float = 1e-5
    transformer_norm_eps: float = 1e-6
    cross_attention_dim: int = 768  # image-context tokens (ImageProj output width)
    audio_attention_dim: int = 768  # audio tokens (AudioProj output width)
    time_proj_dim: int = 320
    time_embed_dim: int = 1280
    motion_heads: int = 8
    motion_max_len: int = 32
    # Hallo's released inference runs its blocks in the "checkpoint" branch (hallo_family.md §7):
    # motion frames from the reference bank are prepended to every motion module of the attention
    # blocks and the mid block, and the motion modules of the plain (attention-free) blocks are
    # not run although their weights exist. Both are switches so other models can turn them off.
    prepend_motion_frames: bool = True
    run_plain_block_motion: bool = False
    # Hallo's reference reader (hallo_family.md §4, hallo/models/mutual_self_attention.py at
    # 8fd7c57): the reference features are tiled over the (B*F) frame-rows of a call, so frame-row
    # r reads reference group r mod B (with CFG the conditional item's frames alternate between the
    # reference written with the unconditional and the conditional image context); and the
    # readers' copies of the reference/motion banks are rounded to fp16 whatever the model dtype.
    tile_reference_groups: bool = True
    fp16_reference_banks: bool = True

    def __post_init__(self) -> None:
        if len(self.down_attention) != len(self.block_out_channels):
            raise ValueError("down_attention needs one flag per level")
        for c in self.block_out_channels:
            if c % self.norm_groups or c % self.heads:
                raise ValueError(f"channel width {c} must divide by norm_groups and heads")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that sizes a :class:`~talkfast.models.net.TalkingHeadNet`."""

    name: str = "hallo"
    unet: UNetConfig = field(default_factory=UNetConfig)
    latent_channels: int = 4
    vae_scale_factor: int = 8  # pixels per latent cell
    image_size: int = 512
    clip_frames: int = 16
    motion_frames: int = 2
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)
    face_locator_in: int = 3
    image_embed_dim: int = 512  # face-identity embedding fed to ImageProj
    image_tokens: int = 4
    audio_window: int = 5
    audio_layers: int = 12
    audio_feature_dim: int = 768
    audio_hidden: int = 512
    audio_tokens: int = 32
    audio_features: str = "wav2vec2"  # which extractor feeds AudioProj: "wav2vec2" or "mel"

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


HALLO = ModelConfig()

TINY = ModelConfig(
    name="tiny",
    unet=UNetConfig(
        tile_reference_groups=False,
        fp16_reference_banks=False,
        block_out_channels=(16, 32, 32, 32),
        heads=2,
        norm_groups=4,
        cross_attention_dim=16,
        audio_attention_dim=16,
        time_proj_dim=16,
        time_embed_dim=32,
        motion_heads=2,
    ),
    image_size=64,
    clip_frames=4,
    motion_frames=2,
    face_locator_channels=(4, 8, 8, 16),
    image_embed_dim=8,
    image_tokens=2,
    audio_window=5,
    audio_layers=1,
    audio_feature_dim=320,  # the mel extractor: 4 steps x 80 bins per frame
    audio_hidden=16,
    audio_tokens=4,
    audio_features="mel",
)

# The embedded default: 128x128 video, 16x16 latents, mel audio features. Sized so that one
# UNet call (16 frames x CFG 2) takes ~0.4 s on 2 CPU cores (fp32, torch 2.13).
SMALL = ModelConfig(
    name="small",
    unet=UNetConfig(
        tile_reference_groups=False,  # trained without Hallo's reference-reader quirks
        fp16_reference_banks=False,
        block_out_channels=(32, 64, 64, 64),
        heads=2,
        norm_groups=8,
        cross_attention_dim=64,
        audio_attention_dim=64,
        time_proj_dim=32,
        time_embed_dim=128,
        motion_heads=2,
    ),
    image_size=128,
    clip_frames=16,
    motion_frames=2,
    face_locator_channels=(16, 16, 32, 64),
    image_embed_dim=64,
    image_tokens=4,
    audio_window=5,
    audio_layers=1,
    audio_feature_dim=320,
    audio_hidden=256,
    audio_tokens=8,
    audio_features="mel",
)

PRESETS: dict[str, ModelConfig] = {c.name: c for c in (HALLO, TINY, SMALL)}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
