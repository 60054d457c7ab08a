"""DFA — decoupled foreground attention, and reference-feature removal.

DFA: in the reduced (shallow) calls of a caching accelerator, the self-attentions of the layers
on the shallow path compute only the foreground (face) tokens, attending to foreground tokens
only; background token outputs are the key step's outputs for the same CFG half. Optionally the
temporal attention of those layers is restricted to foreground positions too. It attaches by
wrapping attention processors; with an all-foreground mask it reproduces the plain result.

On a windowed predictor (EchoMimic's shifting windows, :mod:`talkfast.sampling.windows`) a key
step's outputs are kept per absolute frame, averaged over the windows that hold the frame (as the
cached deep feature is, :class:`~talkfast.accelerators.base.CapturePlan`), and a reduced window
call reads its background tokens at its own frames: frames computed in other temporal contexts
(the same approximation as the deep feature's). The foreground there is EchoMimic's face mask
(the portrait's ``mask``), pooled to each token grid.

Reference removal: in the listed layers, spatial self-attention uses the layer's own tokens only
(no concatenated ReferenceNet tokens), in every call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..face.masks import token_mask
from ..models.attention import ReferenceReadProcessor
from .base import SharedState, expand_items, gather_frames, key_items, scatter_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DFAConfig:
    dilate: float = 0.1  # face box grown by this fraction of its size per side (head motion)
    spatial: bool = True  # spatial self-attention (with reference tokens)
    audio: bool = True  # the audio module's self-attention
    temporal: bool = False  # the motion module's attention over frames, per position


class DFAProcessor:
    """Wraps a processor: records the full output in key calls, computes foreground tokens only
    in shallow calls. ``axis`` "tokens" (spatial: (B*F, L, C)) or "positions" (temporal:
    (B*L, F, C))."""

    def __init__(self, inner, owner: "DFA", axis: str):
        self.inner, self.owner, self.axis = inner, owner, axis
        self.cache: torch.Tensor | None = None
        # windowed: per-frame sums (K, L, tokens-or-positions, C) and counts (K, L) of the key step
        self._sums: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None

    def clear(self) -> None:
        self.cache = self._sums = self._count = self._mean = None

    def _fold(self, out: torch.Tensor, window) -> None:
        """Add one key-step window call's output into the per-frame store."""
        w, frames, length = window
        f = frames.shape[1]
        if self.axis == "tokens":
            per = out.reshape(-1, f, *out.shape[1:])  # (K, f, T, C)
        else:
            k = len(self.owner.net.ref_state.layout)  # the items of this key call
            per = out.reshape(k, -1, f, out.shape[2]).permute(0, 2, 1, 3)  # (K, f, P, C)
        if w == 0 or self._sums is None:  # the first window of a key step: a new store
            self._sums = per.new_zeros((per.shape[0], length, *per.shape[2:]))
            self._count = per.new_zeros((per.shape[0], length))
            self._mean = None
        scatter_frames(self._sums, per, frames, self._count)

    def _gathered(self, idx: list[int], frames: torch.Tensor) -> torch.Tensor:
        """The key step's per-frame mean at a reduced window call's frames: (items * f, T-or-P, C)."""
        if self._mean is None:
            mean = self._sums / self._count.clamp_min(1)[:, :, None, None]
            self._mean = mean.reshape(-1, *mean.shape[2:])  # (K * L, T-or-P, C), as gather_frames reads
        return gather_frames(self._mean, self._sums.shape[1], idx, frames)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 memory_groups: tuple[int, ...] | None = None, **kw):
        """``memory_groups``: passed on to a memory motion module's processor (MEMO), which in a
        reduced call reads its memory at the foreground positions only."""
        if memory_groups is not None:
            kw["memory_groups"] = memory_groups
        shared: SharedState = self.owner.shared
        if shared.phase == "key":
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
            if shared.window is None:
                self.cache = out
            else:
                self.cache = None
                self._fold(out, shared.window)
            return out
        windowed = shared.window is not None and self._sums is not None
        if shared.phase != "shallow" or (self.cache is None and not windowed):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        rs = self.owner.net.ref_state
        idx = key_items(shared.key_layout, rs.layout)
        items = len(idx)
        # background rows: the key step's outputs for the same CFG half (windowed: at this window's frames)
        if self.axis == "tokens":
            n, length, c = hidden_states.shape
            base = (self._gathered(idx, shared.window[1]) if windowed
                    else expand_items(self.cache, n // items, idx))
            fg = self.owner.foreground(length, hidden_states.device)
            sub = hidden_states.index_select(1, fg)
            if isinstance(self.inner, ReferenceReadProcessor):
                self.inner.token_index = fg
                try:
                    part = self.inner(attn, sub)
                finally:
                    self.inner.token_index = None
            else:
                part = self.inner(attn, sub, encoder_hidden_states)
            return base.index_copy(1, fg, part.to(base.dtype))
        # temporal: rows are (item, position), attention runs over frames
        rows, frames, c = hidden_states.shape
        length = rows // items
        base = (self._gathered(idx, shared.window[1]).reshape(items, frames, length, c).permute(0, 2, 1, 3).contiguous()
                if windowed else expand_items(self.cache, length, idx).reshape(items, length, frames, c))
        fg = self.owner.foreground(length, hidden_states.device)
        x = hidden_states.reshape(items, length, frames, c).index_select(1, fg)
        if memory_groups is not None:
            kw["positions"] = fg
        part = self.inner(attn, x.reshape(-1, frames, c), **kw).reshape(items, -1, frames, c)
        return base.index_copy(1, fg, part.to(base.dtype)).reshape(rows, frames, c)


class DFA:
    """Plug-in of a caching accelerator (needs its key/shallow phases and cut point)."""

    def __init__(self, cfg: DFAConfig = DFAConfig(), regions=None):
        self.cfg = cfg
        self.regions = regions  # FaceRegions of the portrait; None -> all tokens (plain attention)
        self.net = None
        self.shared: SharedState | None = None
        self._wrapped: list[tuple[object, object]] = []  # (attention module, original processor)
        self._masks: dict[tuple[int, str], torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def attach(self, net, owner) -> None:
        self.net, self.shared = net, owner.shared
        unet = net.denoising_unet
        _, u = owner.cut()
        for stage in unet.stages[u:]:
            parts = stage.name.split(".")
            if parts[0] != "up" or parts[2] == "sample":
                continue
            block, j = unet.up_blocks[int(parts[1])], int(parts[2])
            attn, audio, motion = (block.component(k, j) for k in ("attentions", "audio_modules", "motion_modules"))
            if attn is not None and self.cfg.spatial:
                self._wrap(attn.transformer_blocks[0].attn1, "tokens")
            if audio is not None and self.cfg.audio:
                self._wrap(audio.transformer_blocks[0].attn1, "tokens")
            if motion is not None and self.cfg.temporal:
                for a in motion.temporal_transformer.transformer_blocks[0].attention_blocks:
                    self._wrap(a, "positions")

    def _wrap(self, attn, axis: str) -> None:
        original = attn.processor
        attn.set_processor(DFAProcessor(original, self, axis))
        self._wrapped.append((attn, original))

    def detach(self) -> None:
        for attn, original in reversed(self._wrapped):
            attn.set_processor(original)
        self._wrapped.clear()
        self.net = None

    def begin(self, pipeline, portrait) -> None:
        self.regions = portrait.regions if portrait is not None else None
        mask = getattr(portrait, "mask", None)  # EchoMimic's portrait: its face mask (1, S, S)
        self.mask = mask if isinstance(mask, torch.Tensor) else None
        self._masks.clear()
        if self.regions is not None and not self.regions.detected:
            log.warning("DFA: no face found; attention stays full-frame")
        if pipeline is not None and portrait is not None:
            # every level's token mask made now, not lazily inside a (possibly compiled) model call
            side = portrait.image.size[0] // pipeline.cfg.vae_scale_factor
            for level in range(pipeline.cfg.unet.num_levels):
                self.foreground((side >> level) ** 2, pipeline.device)

    def reset(self) -> None:
        for attn, _ in self._wrapped:
            attn.processor.clear()

    def foreground(self, length: int, device) -> torch.Tensor:
        """Indices of the foreground tokens of a square token grid with ``length`` tokens."""
        key = (length, str(device))
        if key not in self._masks:
            side = int(round(length**0.5))
            if side * side != length:
                raise ValueError(f"DFA needs square token grids, got {length} tokens")
            if self.mask is not None:  # the mask pooled to the grid: a token with any face pixel is foreground
                pooled = torch.nn.functional.adaptive_max_pool2d(self.mask.float().reshape(1, 1, *self.mask.shape[-2:]),
                                                                 (side, side))
                mask = pooled.flatten() > 0.5
            elif self.regions is None:
                mask = torch.ones(length, dtype=torch.bool)
            else:
                mask = token_mask(self.regions, (side, side), dilate=self.cfg.dilate)
            self._masks[key] = mask.nonzero().flatten().to(device)
        return self._masks[key]


class ReferenceRemoval:
    """Turns off reference K/V in the listed spatial layers (keys like "up_blocks.3.attentions.2");
    ``None`` -> the spatial layers on the owner's shallow path (U32 for branch 0)."""

    def __init__(self, layers: tuple[str, ...] | None = None):
        self.layers = layers
        self.net = None
        self._off: list[str] = []

    def attach(self, net, owner) -> None:
        self.net = net
        layers = self.layers
        if layers is None:
            _, u = owner.cut()
            layers = []
            for stage in net.denoising_unet.stages[u:]:
                parts = stage.name.split(".")
                if parts[0] == "up" and parts[2] != "sample":
                    attn = net.denoising_unet.up_blocks[int(parts[1])].component("attentions", int(parts[2]))
                    if attn is not None:
                        layers.append(attn.key)
        unknown = [k for k in layers if k not in net.readers]
        if unknown:
            raise ValueError(f"unknown reference layers {unknown}; choose from {sorted(net.readers)}")
        for k in layers:
            net.readers[k].enabled = False
        self._off = list(layers)

    def detach(self) -> None:
        if self.net is not None:
            for k in self._off:
                self.net.readers[k].enabled = True
        self._off, self.net = [], None

    def begin(self, pipeline, portrait) -> None:
        pass

    def reset(self) -> None:
        pass
