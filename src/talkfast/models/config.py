"""Model configuration: one module tree, sized by a dataclass, with named presets.

The ``hallo`` preset reproduces the SD-1.5-sized Hallo network (its ``net.pth`` loads unchanged);
``echomimic`` / ``echomimic_pose`` are EchoMimic v1 (antgroup/echomimic a53e970) and ``memo`` is
MEMO (memoavatar/memo a5aee30) in the same tree, selected by the switches below (no second UNet
class); ``tiny`` is for unit tests; ``small`` is the
embedded default model trained on the synthetic corpus.
Presets differ only in numbers and switches, never in the classes or the code path they build.
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
    # What the denoising UNet's spatial cross-attention (attn2) attends to: "image" = the ImageProj
    # tokens, the same for every frame (Hallo); "audio" = each frame's own audio tokens, (B*F, T, D)
    # with D = cross_attention_dim (EchoMimic: whisper tokens (B*F, 50, 384), to_k/to_v (C, 384)
    # without bias; src/models/unet_3d_echo.py + configs/inference/inference_v2.yaml at a53e970).
    spatial_context: str = "image"
    # attn2's output is multiplied by this before its residual add (EchoMimic: audio_feature_ratio
    # 3.0 in src/models/mutual_self_attention.py at a53e970). Denoising UNet only.
    spatial_context_scale: float = 1.0
    # Hallo's separate audio modules (``audio_modules.j``, fed by audio tokens and the masks).
    audio_modules: bool = True
    # Whether the reference UNet's transformer blocks have norm2/attn2 (Hallo) or not (EchoMimic's
    # fork of BasicTransformerBlock: norm1, attn1, norm3, ff only), and so whether it takes a context.
    reference_cross_attention: bool = True
    # A motion module in the mid block (AnimateDiff ``motion_module_mid_block``; Hallo and
    # EchoMimic's inference_v2.yaml: true).
    motion_mid_block: bool = True
    # Which audio modules (with ``audio_modules``): "hallo" = audio cross-attention gated by the
    # full/face/lip masks; "joint" = MEMO's emotion-conditioned joint audio-visual attention, whose
    # audio stream is carried from module to module through the whole UNet (models/memo_layers.py).
    audio_module: str = "hallo"
    # The motion modules' temporal attention: "softmax" (AnimateDiff) or "memory" (MEMO's linear
    # attention with a long-term memory of the past frames: the reference net's features of those
    # frames update the memory once per clip, every call reads it; models/memo_layers.py).
    motion_attention: str = "softmax"
    # The reference UNet's last transformer block stops after norm1 (MEMO's ``is_final_block``:
    # its only product is the norm1 feature the denoiser reads; no attn1/attn2/ff/proj_out weights).
    reference_tail_norm_only: bool = False

    def __post_init__(self) -> None:
        if len(self.down_attention) != len(self.block_out_channels):
            raise ValueError("down_attention needs one flag per level")
        if self.spatial_context not in ("image", "audio"):
            raise ValueError(f"spatial_context must be 'image' or 'audio', not {self.spatial_context!r}")
        if self.spatial_context == "audio" and self.audio_modules:
            raise ValueError("audio tokens feed either the spatial cross-attention or the audio modules, not both")
        if self.audio_module not in ("hallo", "joint"):
            raise ValueError(f"audio_module must be 'hallo' or 'joint', not {self.audio_module!r}")
        if self.motion_attention not in ("softmax", "memory"):
            raise ValueError(f"motion_attention must be 'softmax' or 'memory', not {self.motion_attention!r}")
        if self.motion_attention == "memory" and self.prepend_motion_frames:
            raise ValueError("memory motion modules read the motion frames through their memory, not prepended")
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
    audio_features: str = "wav2vec2"  # which extractor feeds AudioProj: "wav2vec2", "mel" (or "whisper": EchoMimic)
    # The two conditioning projections of Hallo's Net. EchoMimic has neither: no image context at
    # all, and its whisper tokens go straight into attn2.
    image_projection: bool = True  # an ``imageproj`` child (face-identity embedding -> context tokens)
    audio_projection: bool = True  # an ``audioproj`` child (windowed audio features -> audio tokens)
    face_locator: bool = True  # a ``face_locator`` child (MEMO has none: the first skip is conv_in(x))
    # Trained as Hallo and MEMO were released: each clip's motion frames re-encoded from the previous
    # clip's decoded pixels, and the reference net's images paired with the image contexts in Hallo's
    # interleaved order. The sampling defaults follow the network, not its name
    # (GenerateOptions.resolved: motion_source "pixels" and hallo_context_tiling); the hallo and memo
    # presets set it, and so do the loaders of Hallo and MEMO checkpoint folders.
    hallo_chaining: bool = True

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


HALLO = ModelConfig()

TINY = ModelConfig(
    name="tiny",
    hallo_chaining=False,
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
    hallo_chaining=False,
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

# EchoMimic v1 (antgroup/echomimic at a53e970; echomimic_memo.md §1): SD-1.5 widths, audio through
# attn2 (x3.0), no image context/projections, no audio modules or masks, no motion-frame prepending,
# all 21 motion modules run (max_len 32), reference UNet without attn2, bank per item (the reader's
# ``d.unsqueeze(1).repeat(1, video_length, 1, 1)``) rounded to fp16 (``update(..., dtype=fp16)``),
# FaceLocator(320, 1 ch, (16, 32, 96, 256)). Windows of 12 frames; per-frame tokens (50, 384) are
# 10 whisper rows x 5 layers x 384.
ECHOMIMIC = ModelConfig(
    name="echomimic",
    hallo_chaining=False,
    unet=UNetConfig(
        cross_attention_dim=384,
        audio_attention_dim=384,
        spatial_context="audio",
        spatial_context_scale=3.0,
        audio_modules=False,
        reference_cross_attention=False,
        prepend_motion_frames=False,
        run_plain_block_motion=True,
        motion_mid_block=True,
        motion_max_len=32,
        tile_reference_groups=False,
        fp16_reference_banks=True,
    ),
    clip_frames=12,
    motion_frames=0,
    face_locator_channels=(16, 32, 96, 256),
    face_locator_in=1,
    audio_window=10,
    audio_layers=5,
    audio_feature_dim=384,
    audio_tokens=50,
    audio_features="whisper",
    image_projection=False,
    audio_projection=False,
)

# The pose variants (animation_pose*.yaml): the face locator reads RGB landmark drawings.
ECHOMIMIC_POSE = ECHOMIMIC.replace(name="echomimic_pose", face_locator_in=3)

# MEMO (memoavatar/memo at a5aee30, configs/inference.yaml and the diffusion_net config in
# memo_keys.json; echomimic_memo.md §2): Hallo's widths and reference/spatial layout (reference
# tiled over frames, unconditional half without reference) with the reference features in the model
# dtype (no fp16 banks), joint audio modules carrying the audio stream, memory linear attention in
# all 21 motion modules (no prepended motion frames), 16 past frames, a reference net whose last
# block stops after norm1, no face locator. 16-frame clips at 30 fps.
MEMO = ModelConfig(
    name="memo",
    unet=UNetConfig(
        tile_reference_groups=True,
        fp16_reference_banks=False,
        prepend_motion_frames=False,
        run_plain_block_motion=True,
        motion_mid_block=True,
        audio_module="joint",
        motion_attention="memory",
        reference_tail_norm_only=True,
    ),
    clip_frames=16,
    motion_frames=16,
    face_locator=False,
)

# MEMO's switches at the tiny test width (tests write a MEMO-layout folder of this size).
MEMO_TINY = MEMO.replace(
    name="memo_tiny",
    unet=dataclasses.replace(MEMO.unet, block_out_channels=(16, 32, 32, 32), heads=2, norm_groups=4,
                             cross_attention_dim=16, audio_attention_dim=16, time_proj_dim=16, time_embed_dim=32,
                             motion_heads=2),
    image_size=64, clip_frames=4, motion_frames=3, image_embed_dim=8, image_tokens=2, audio_layers=2,
    audio_feature_dim=8, audio_hidden=16, audio_tokens=4,
)

PRESETS: dict[str, ModelConfig] = {c.name: c for c in (HALLO, TINY, SMALL, ECHOMIMIC, ECHOMIMIC_POSE, MEMO, MEMO_TINY)}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
