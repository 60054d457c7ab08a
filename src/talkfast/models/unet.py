"""The ReferenceNet (2D) and the denoising UNet3D of the Hallo family, as one module tree.

``TalkingUNet(cfg, role="reference")`` is Hallo's reference UNet (no audio/motion modules, no
output head); ``role="denoise"`` is the denoising UNet3D. Keys match Hallo's ``net.pth``. The
``UNetConfig`` switches make the same tree EchoMimic v1's two UNets (audio tokens through attn2,
no audio modules, reference blocks without attn2; antgroup/echomimic a53e970), with EchoMimic's keys.

The forward pass is an explicit list of *stages* (``conv_in``, ``down.<i>.<j>``,
``down.<i>.sample``, ``mid``, ``up.<i>.<j>``, ``up.<i>.sample``, ``out``) run by one small
executor. A :class:`StagePlan` may skip stages and inspect or replace the running hidden state
before any stage: that is how the caching accelerators cut the network (run the shallow path
only, cache the deep decoder feature) without a second copy of the forward code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from .attention import ItemLayout, ReferenceState
from .config import UNetConfig
from .layers import AudioModule, MotionModule, SpatialTransformer, _tokens
from .memo_layers import JointAudioModule, ReferenceTail, use_memory_attention

Masks = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]]


@dataclass
class UNetCond:
    """Per-call conditioning of the denoising UNet; every tensor has batch size B (items).

    context: (B, T, D) image-context tokens (ImageProj output) for the spatial cross-attention;
        None for models without image context (EchoMimic; its reference UNet has no attn2).
    audio: (B, F, Ta, Da) audio tokens: AudioProj output for Hallo's audio modules, or (models with
        ``spatial_context="audio"``) the per-frame tokens attn2 attends to (EchoMimic: whisper (50, 384)).
    masks: (full, face, lip), each a list over resolution levels of (B, H_l*W_l) weights.
    face_feature: (B, C0, F or 1, h, w) FaceLocator output, added after conv_in.
    layout: which reference group each item reads and whether it uses reference K/V.
    emotion: (B,) emotion class per item (MEMO's joint audio modules; 9 = none).
    """

    context: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    masks: Masks | None = None
    face_feature: torch.Tensor | None = None
    layout: ItemLayout | None = None
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    emotion: torch.Tensor | None = None


@dataclass
class RunState:
    """Mutable state threaded through the stages of one forward call."""

    h: torch.Tensor  # (B*F, C, H, W)
    temb: torch.Tensor  # (B*F, E)
    context: torch.Tensor | None  # (B*F, T, D): what attn2 attends to (image or per-frame audio tokens)
    batch: int
    frames: int
    # (B*F, Ta, Da): the audio tokens; with joint audio modules (MEMO) the audio stream, which each
    # module replaces by its output (None after the last)
    audio: torch.Tensor | None = None
    masks: Masks | None = None  # per level (B*F, HW)
    emotion: torch.Tensor | None = None  # (B,) joint audio modules' emotion per item
    memory_groups: tuple[int, ...] | None = None  # memory motion modules: the group each item reads
    face_feature: torch.Tensor | None = None  # (B*F, C0, h, w)
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    skips: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunState], None]


class StagePlan:
    """Decides which stages of one forward call run, and may touch the state before each.

    The default plan runs everything. Subclasses (accelerators) override ``active``/``before``.
    """

    def active(self, index: int, stage: Stage) -> bool:
        return True

    def before(self, index: int, stage: Stage, state: RunState) -> None:
        pass


class UNetBlock(nn.Module):
    """One resolution level: layers of (resnet, [spatial attn], [audio module], [motion module])
    plus an optional down/upsampler. Attribute names are Hallo's."""

    def __init__(self, *, resnets, attentions=(), audio_modules=(), motion_modules=(), downsampler=None, upsampler=None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.audio_modules = nn.ModuleList(audio_modules)
        self.motion_modules = nn.ModuleList(motion_modules)
        if downsampler is not None:
            self.downsamplers = nn.ModuleList([downsampler])
        if upsampler is not None:
            self.upsamplers = nn.ModuleList([upsampler])

    def component(self, kind: str, j: int):
        mods = getattr(self, kind)
        return mods[j] if j < len(mods) else None


class TalkingUNet(nn.Module):
    def __init__(self, cfg: UNetConfig, role: str = "denoise", ref_state: ReferenceState | None = None):
        super().__init__()
        if role not in ("reference", "denoise"):
            raise ValueError(f"role must be 'reference' or 'denoise', not {role!r}")
        self.cfg, self.role = cfg, role
        self.ref_state = ref_state if ref_state is not None else ReferenceState()
        temporal = role == "denoise"
        # EchoMimic's reference blocks have no norm2/attn2; the denoiser's attn2 output may be scaled.
        self.has_cross_attention = temporal or cfg.reference_cross_attention
        context_dim = cfg.cross_attention_dim if self.has_cross_attention else None
        context_scale = cfg.spatial_context_scale if temporal else 1.0
        audio_modules = temporal and cfg.audio_modules
        memory = temporal and cfg.motion_attention == "memory"
        self.tail_key = None  # MEMO's reference net: the key of its last block (norm1 only)
        if not temporal and cfg.reference_tail_norm_only:
            self.tail_key = f"up_blocks.{cfg.num_levels - 1}.attentions.{cfg.layers_per_block}"
        ch = cfg.block_out_channels
        n = cfg.num_levels
        groups, eps = cfg.norm_groups, cfg.resnet_eps

        def resnet(cin, cout):
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=cfg.time_embed_dim,
                                 groups=groups, eps=eps, non_linearity="silu")

        def spatial(c, key):
            if key == self.tail_key:
                return ReferenceTail(c, groups, cfg.transformer_norm_eps, key, self.ref_state)
            return SpatialTransformer(c, cfg.heads, context_dim, groups, cfg.transformer_norm_eps, key, context_scale)

        final_audio = f"up_blocks.{n - 1}.{cfg.layers_per_block}"

        def audio(c, inner, level, where=""):
            if cfg.audio_module == "joint":  # MEMO: the last module has no audio output
                return JointAudioModule(c, inner, cfg.heads, cfg.audio_attention_dim, groups, final=where == final_audio)
            return AudioModule(c, inner, cfg.heads, cfg.audio_attention_dim, groups, cfg.transformer_norm_eps, level)

        def motion(c, source=""):
            module = MotionModule(c, cfg.motion_heads, cfg.motion_max_len, groups)
            if memory:  # MEMO: its past frames are this layer's reference feature
                use_memory_attention(module, source)
            return module

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(cfg.time_proj_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(cfg.time_proj_dim, cfg.time_embed_dim)

        def source(block: str, j: int, attn: bool) -> str:
            """The reference feature of layer j: its attention's norm1 tokens, or (plain blocks) its resnet output."""
            return f"{block}.attentions.{j}" if attn else f"{block}.resnets.{j}"

        self.down_blocks = nn.ModuleList()
        cout = ch[0]
        for i in range(n):
            cin, cout = cout, ch[i]
            attn = cfg.down_attention[i]
            ins = [cin if j == 0 else cout for j in range(cfg.layers_per_block)]
            self.down_blocks.append(UNetBlock(
                resnets=[resnet(c, cout) for c in ins],
                attentions=[spatial(cout, f"down_blocks.{i}.attentions.{j}") for j in range(len(ins))] if attn else [],
                # Hallo sizes the audio module's inner width from the layer's input channels.
                audio_modules=[audio(cout, c, i) for c in ins] if attn and audio_modules else [],
                motion_modules=[motion(cout, source(f"down_blocks.{i}", j, attn)) for j in range(len(ins))]
                if temporal else [],
                downsampler=Downsample2D(cout, use_conv=True, out_channels=cout, padding=1, name="op") if i < n - 1 else None,
            ))

        cm = ch[-1]
        self.mid_block = UNetBlock(
            resnets=[resnet(cm, cm), resnet(cm, cm)],
            attentions=[spatial(cm, "mid_block.attentions.0")],
            audio_modules=[audio(cm, cm, n - 1)] if audio_modules else [],
            motion_modules=[motion(cm, "mid_block.attentions.0")] if temporal and cfg.motion_mid_block else [],
        )

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        up_attention = list(reversed(cfg.down_attention))
        prev = rev[0]
        layers = cfg.layers_per_block + 1
        for i in range(n):
            cout = rev[i]
            block_in = rev[min(i + 1, n - 1)]  # channels of the skips coming from the level below
            attn = up_attention[i]
            ins = []
            for j in range(layers):
                skip = block_in if j == layers - 1 else cout
                ins.append((prev if j == 0 else cout) + skip)
            level = n - 1 - i
            self.up_blocks.append(UNetBlock(
                resnets=[resnet(c, cout) for c in ins],
                attentions=[spatial(cout, f"up_blocks.{i}.attentions.{j}") for j in range(layers)] if attn else [],
                audio_modules=[audio(cout, block_in, level, f"up_blocks.{i}.{j}") for j in range(layers)]
                if attn and audio_modules else [],
                motion_modules=[motion(cout, source(f"up_blocks.{i}", j, attn)) for j in range(layers)] if temporal else [],
                upsampler=Upsample2D(cout, use_conv=True, out_channels=cout) if i < n - 1 else None,
            ))
            prev = cout

        if temporal:
            self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
            self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

        self.stages: list[Stage] = self._build_stages()

    # ------------------------------------------------------------------ stages
    def _layer_fn(self, block: UNetBlock, j: int, plain: bool, pop_skip: bool, push_skip: bool, name: str):
        res = block.resnets[j]
        attn = block.component("attentions", j)
        audio = block.component("audio_modules", j)
        motion = block.component("motion_modules", j)
        if plain and not self.cfg.run_plain_block_motion:
            motion = None
        prepend = self.cfg.prepend_motion_frames and not plain
        # MEMO's reference net also hands over the resnet outputs of its attention-free blocks
        # (the past frames of the memory motion modules there)
        record = f"{name}.resnets.{j}" if (self.role == "reference" and plain
                                           and self.cfg.motion_attention == "memory") else None

        def run(s: RunState) -> None:
            h = s.h
            if pop_skip:
                h = torch.cat([h, s.skips.pop()], dim=1)
            h = res(h, s.temb)
            if record is not None:
                self.ref_state.record(record, _tokens(h))
            if attn is not None:
                h = attn(h, s.context)
            if audio is not None and s.audio is not None:
                h = self._audio(audio, h, s)
            if motion is not None:
                h = self._motion(motion, h, s, attn.key if (prepend and attn is not None) else None)
            s.h = h
            if push_skip:
                s.skips.append(h)

        return run

    @staticmethod
    def _audio(module, h: torch.Tensor, s: RunState) -> torch.Tensor:
        if isinstance(module, JointAudioModule):  # MEMO: the audio stream goes on to the next module
            h, s.audio = module(h, s.audio, s.emotion)
            return h
        return module(h, s.audio, s.masks, s.motion_scale)

    def _motion(self, module: MotionModule, h: torch.Tensor, s: RunState, key: str | None) -> torch.Tensor:
        if module.source is not None:  # a memory motion module (MEMO)
            return module(h, s.frames, s.memory_groups)
        extra = self.ref_state.motion.get(key) if key is not None and self.ref_state.mode == "read" else None
        if extra is None:
            return module(h, s.frames)
        b, f = s.batch, s.frames
        _, c, hh, ww = h.shape
        m = extra.shape[1]
        mf = extra.to(h.dtype).reshape(b, m, hh, ww, c).permute(0, 1, 4, 2, 3)
        x = torch.cat([mf, h.reshape(b, f, c, hh, ww)], dim=1).reshape(b * (m + f), c, hh, ww)
        out = module(x, m + f).reshape(b, m + f, c, hh, ww)[:, m:]
        return out.reshape(b * f, c, hh, ww)

    def _build_stages(self) -> list[Stage]:
        stages = [Stage("conv_in", self._conv_in)]
        n = self.cfg.num_levels
        for i, block in enumerate(self.down_blocks):
            plain = not self.cfg.down_attention[i]
            for j in range(len(block.resnets)):
                stages.append(Stage(f"down.{i}.{j}", self._layer_fn(block, j, plain, False, True, f"down_blocks.{i}")))
            if hasattr(block, "downsamplers"):
                stages.append(Stage(f"down.{i}.sample", self._sampler_fn(block.downsamplers[0], True)))
        stages.append(Stage("mid", self._mid))
        up_attention = list(reversed(self.cfg.down_attention))
        for i, block in enumerate(self.up_blocks):
            for j in range(len(block.resnets)):
                stages.append(Stage(f"up.{i}.{j}", self._layer_fn(block, j, not up_attention[i], True, False,
                                                                 f"up_blocks.{i}")))
            if hasattr(block, "upsamplers"):
                stages.append(Stage(f"up.{i}.sample", self._sampler_fn(block.upsamplers[0], False)))
        if self.role == "denoise":
            stages.append(Stage("out", self._out))
        assert sum(s.name.startswith("up.") and not s.name.endswith("sample") for s in stages) == n * (self.cfg.layers_per_block + 1)
        return stages

    def __deepcopy__(self, memo):
        """A deep copy whose stages run its own modules: the stage closures hold the modules they
        call, which ``copy.deepcopy`` would otherwise leave pointing at the original's."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key != "stages":
                new.__dict__[key] = copy.deepcopy(value, memo)
        new.stages = new._build_stages()
        return new

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def _conv_in(self, s: RunState) -> None:
        h = self.conv_in(s.h)
        if s.face_feature is not None:
            h = h + s.face_feature
        s.h = h
        s.skips.append(h)

    @staticmethod
    def _sampler_fn(module: nn.Module, push: bool):
        def run(s: RunState) -> None:
            s.h = module(s.h)
            if push:
                s.skips.append(s.h)

        return run

    def _mid(self, s: RunState) -> None:
        mb = self.mid_block
        h = mb.resnets[0](s.h, s.temb)
        h = mb.attentions[0](h, s.context)
        if len(mb.audio_modules) and s.audio is not None:
            h = self._audio(mb.audio_modules[0], h, s)
        if len(mb.motion_modules):
            key = mb.attentions[0].key if self.cfg.prepend_motion_frames else None
            h = self._motion(mb.motion_modules[0], h, s, key)
        s.h = mb.resnets[1](h, s.temb)

    def _out(self, s: RunState) -> None:
        s.h = self.conv_out(F.silu(self.conv_norm_out(s.h)))

    # ------------------------------------------------------------------ forward
    def embed_time(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Time embedding with one timestep per batch item (a scalar is broadcast)."""
        t = torch.as_tensor(timestep, device=self.conv_in.weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"timestep must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return self.time_embedding(self.time_proj(t).to(dtype))

    def prepare(self, sample: torch.Tensor, timestep, cond: UNetCond) -> RunState:
        """Flatten frames and broadcast the conditioning to every (item, frame)."""
        if sample.ndim == 4:  # (B, C, H, W): a 2D call, one frame
            sample = sample.unsqueeze(2)
        b, c, f, h, w = sample.shape
        down = 2 ** (self.cfg.num_levels - 1)
        if h % down or w % down:
            raise ValueError(f"latent size {h}x{w} must be divisible by {down}")
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        temb = self.embed_time(timestep, b, x.dtype).repeat_interleave(f, 0)
        audio_context = self.role == "denoise" and self.cfg.spatial_context == "audio"
        ctx = cond.context
        if audio_context:  # EchoMimic: attn2 of frame-row (b f) attends to that frame's audio tokens
            if ctx is not None:
                raise ValueError("this model takes no image context (its attn2 attends to the audio tokens)")
            if cond.audio is None or cond.audio.shape[:2] != (b, f):
                got = None if cond.audio is None else tuple(cond.audio.shape)
                raise ValueError(f"this model needs per-frame audio tokens of shape ({b}, {f}, T, D), got {got}")
            rows = cond.audio.reshape(b * f, *cond.audio.shape[2:])
        elif ctx is None:
            if self.has_cross_attention:
                raise ValueError("this UNet's spatial cross-attention needs a context")
            rows = None
        else:
            if ctx.shape[0] != b:
                raise ValueError(f"context has batch {ctx.shape[0]}, sample has {b}")
            rows = ctx.repeat_interleave(f, 0)
        state = RunState(h=x, temb=temb, context=rows, batch=b, frames=f, motion_scale=cond.motion_scale)
        if self.role == "denoise":
            if cond.audio is not None and not audio_context:
                if cond.audio.shape[:2] != (b, f):
                    raise ValueError(f"audio tokens {tuple(cond.audio.shape)} do not match batch {b} x {f} frames")
                state.audio = cond.audio.reshape(b * f, *cond.audio.shape[2:])
                if self.cfg.audio_module == "joint":
                    if cond.emotion is None or cond.emotion.shape != (b,):
                        got = None if cond.emotion is None else tuple(cond.emotion.shape)
                        raise ValueError(f"this model's audio modules need one emotion per item, shape ({b},); got {got}")
                    state.emotion = cond.emotion
                else:
                    if cond.masks is None:
                        raise ValueError("audio conditioning needs the full/face/lip masks")
                    state.masks = tuple([m.repeat_interleave(f, 0) for m in kind] for kind in cond.masks)
            if cond.face_feature is not None:
                ff = cond.face_feature
                ff = ff.expand(b, ff.shape[1], f, *ff.shape[3:]) if ff.shape[2] == 1 else ff
                state.face_feature = ff.permute(0, 2, 1, 3, 4).reshape(b * f, *ff.shape[1:2], *ff.shape[3:])
            rs = self.ref_state
            rs.num_frames = f
            rs.layout = cond.layout if cond.layout is not None else ItemLayout((0,) * b, (True,) * b)
            rs.motion.clear()
            if self.cfg.motion_attention == "memory":
                state.memory_groups = rs.layout.group
        return state

    def forward(self, sample: torch.Tensor, timestep, cond: UNetCond, plan: StagePlan | None = None) -> torch.Tensor:
        """sample (B, C, F, H, W) -> prediction (B, C_out, F, H, W). Reference role returns None
        (its only product is what the writers recorded)."""
        state = self.prepare(sample, timestep, cond)
        for i, stage in enumerate(self.stages):
            if plan is not None:
                if not plan.active(i, stage):
                    continue
                plan.before(i, stage, state)
            stage.run(state)
        if self.role == "reference":
            return None
        self.ref_state.motion.clear()  # per-call data; empty between calls (also keeps compile guards stable)
        b, f = state.batch, state.frames
        out = state.h
        return out.reshape(b, f, *out.shape[1:]).permute(0, 2, 1, 3, 4)
