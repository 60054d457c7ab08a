"""Attention processors (diffusers' processor interface) used by every attention in talkfast.

The models use diffusers' :class:`~diffusers.models.attention_processor.Attention` (its key layout
``to_q/to_k/to_v/to_out.0`` is Hallo's). How an attention computes is decided by its processor:
plain SDPA, reference-writing or reference-reading. Accelerators that change attention (DFA,
reference removal) swap or wrap these processors; nothing else in the model changes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def project_out(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    x = attn.to_out[0](x)
    return attn.to_out[1](x)


def multihead_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """SDPA over ``heads`` heads of already projected (B, N, inner) tensors -> (B, N, inner)."""
    return merge_heads(F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads),
                                                      split_heads(v, heads)))


def attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head SDPA on already projected (B, N, inner) tensors, then the output projection."""
    return project_out(attn, multihead_sdpa(q, k, v, attn.heads))


def plain_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention of ``x`` (or cross-attention to ``context``)."""
    kv = x if context is None else context
    return attend(attn, attn.to_q(x), attn.to_k(kv), attn.to_v(kv))


class SDPAProcessor:
    """Plain attention with PyTorch SDPA (no masks, no extras)."""

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not used by talkfast models")
        return plain_attention(attn, hidden_states, encoder_hidden_states)


class ScaledSDPAProcessor(SDPAProcessor):
    """Plain attention whose output (after ``to_out``, bias included) is multiplied by ``scale``.

    EchoMimic's audio cross-attention: ``self.attn2(norm2(h), encoder_hidden_states=audio) *
    audio_feature_ratio + h`` with ratio 3.0 (src/models/mutual_self_attention.py at a53e970).
    """

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kw) * self.scale


@dataclass
class ItemLayout:
    """What each batch item of a denoising-UNet call is, for the reference readers.

    ``group[i]``: which reference group (CFG half) item ``i`` takes its bank entries from.
    ``use_ref[i]``: whether item ``i`` concatenates reference tokens to its self-attention K/V
    (Hallo: only the conditional half does).
    ``call_groups``: the groups of the items of one whole call of the model being reproduced (one
    step, both CFG halves: ``(0, 1)``; without CFG ``(1,)``), in batch order. It says where an
    item's frame-rows sit in that call's (B*F)-row batch, which frame-tiled reference groups
    (:meth:`frame_groups`) need when a call carries several steps or one CFG half only.
    None: the distinct groups of ``group`` in order of appearance.
    """

    group: tuple[int, ...]
    use_ref: tuple[bool, ...]
    call_groups: tuple[int, ...] | None = None
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def group_index(self, device: torch.device) -> torch.Tensor:
        """``group`` as a tensor on ``device``, made once per device (no copy in the hot loop)."""
        key = str(device)
        if key not in self._index:
            self._index[key] = torch.tensor(self.group, device=device)
        return self._index[key]

    def frame_groups(self, frames: int, tiled: bool) -> tuple[tuple[int, ...], ...]:
        """The per-frame reference-group map: for every item, the group each of its ``frames``
        frames reads its reference tokens from.

        Not ``tiled``: every frame reads its item's group. ``tiled``: the groups are tiled over
        the frame-rows of one whole call (Hallo, MEMO: a (B, L, C) reference repeated F times
        along the batch), so frame-row r of the B*F rows reads ``call_groups[r mod B]``; an item
        takes the rows of the item of ``call_groups`` with its group, wherever it sits in this
        call (several steps in one call, one CFG half on its own process)."""
        return _frame_groups(self.group, self.call_groups, frames, tiled)

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def cfg(num_samples: int, cfg: bool) -> "ItemLayout":
        """Layout of ``cat([uncond] * n + [cond] * n)`` (or ``[cond] * n`` without CFG). Cached,
        so its device index tensors are made once, not at every call."""
        if cfg:
            return ItemLayout((0,) * num_samples + (1,) * num_samples, (False,) * num_samples + (True,) * num_samples,
                              (0, 1))
        return ItemLayout((1,) * num_samples, (True,) * num_samples, (1,))

    def __len__(self) -> int:
        return len(self.group)


# No caches below: these run inside (possibly compiled) model calls, where torch.compile traces
# them to constants; a few hundred Python operations per reader and call, only with the switch on.
def _frame_groups(group: tuple[int, ...], call_groups: tuple[int, ...] | None, frames: int,
                  tiled: bool) -> tuple[tuple[int, ...], ...]:
    if not tiled:
        return tuple((g,) * frames for g in group)
    call = call_groups if call_groups is not None else tuple(dict.fromkeys(group))
    b = len(call)
    if len(set(call)) != b or not set(group) <= set(call):
        raise ValueError(f"item groups {group} must each be once in the call's groups {call}")
    return tuple(tuple(call[(call.index(g) * frames + j) % b] for j in range(frames)) for g in group)


def _row_plan(index: tuple[int, ...]) -> tuple[tuple[tuple[int, int], ...], int]:
    """(runs of equal entries of one period of ``index`` as (row, count), number of periods)."""
    n = len(index)
    period = next(p for p in range(1, n + 1) if n % p == 0 and all(index[i] == index[i % p] for i in range(p, n)))
    runs: list[tuple[int, int]] = []
    for g in index[:period]:
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1] + 1)
        else:
            runs.append((g, 1))
    return tuple(runs), n // period


def gather_rows(x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """``x[index]`` along dim 0 for a Python index: one period of it from slices and expands, then
    repeated. No index tensor is made, so torch.compile sees only constants."""
    runs, reps = _row_plan(tuple(index))
    parts = [x[g : g + 1].expand(k, *x.shape[1:]) for g, k in runs]
    one = parts[0] if len(parts) == 1 else torch.cat(parts)
    return one.repeat(reps, *([1] * (x.dim() - 1))) if reps > 1 else one.contiguous()


@dataclass
class ReferenceState:
    """Reference features shared by the writer (ReferenceNet) and readers (denoising UNet).

    ``banks[key]`` holds the LayerNorm'ed tokens that the writer at ``key`` saw, shaped
    (G, S, L, C): G reference groups (CFG halves), S images per group (the reference image first,
    then the motion frames). Readers use ``[:, 0]`` as extra keys/values and publish ``[:, 1:]``
    per batch item in ``motion[key]`` for the motion modules of the same layer.

    Two switches of the model (``UNetConfig``), set when the network is built and kept by
    :meth:`clear`: ``tile_frames`` (frame-tiled reference groups, see
    :meth:`ItemLayout.frame_groups`) and ``bank_dtype`` (the dtype the readers' copies of the
    banks are rounded to when the reference is written; None: the model dtype).
    """

    mode: str = "off"  # "off" | "write" | "read"
    keep_graph: bool = False  # training: banks stay attached to the autograd graph
    groups: int = 1
    images: int = 1
    num_frames: int = 1
    layout: ItemLayout | None = None
    tile_frames: bool = False
    bank_dtype: torch.dtype | None = None
    banks: dict[str, torch.Tensor] = field(default_factory=dict)
    motion: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.mode = "off"
        self.keep_graph = False
        self.banks.clear()
        self.motion.clear()
        self.layout = None

    def record(self, key: str, tokens: torch.Tensor) -> None:
        """While writing: keep the (G*S, L, C) ``tokens`` of the reference pass as ``banks[key]``."""
        if self.mode == "write":
            _, l, c = tokens.shape
            bank = tokens if self.keep_graph else tokens.detach()
            self.banks[key] = bank.reshape(self.groups, self.images, l, c).clone()


class ReferenceWriteProcessor(SDPAProcessor):
    """Self-attention that also records its input tokens into ``state.banks[key]``."""

    def __init__(self, state: ReferenceState, key: str):
        self.state, self.key = state, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        self.state.record(self.key, hidden_states)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)


def _runs(flags: tuple[bool, ...]) -> list[tuple[int, int, bool]]:
    """Split a flag tuple into maximal runs (start, stop, flag)."""
    out: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            out.append((start, i, flags[start]))
            start = i
    return out


class ReferenceReadProcessor(SDPAProcessor):
    """Self-attention whose keys/values are ``[own tokens ; reference tokens]`` for the items
    that use the reference, and plain self-attention for the others (Hallo's unconditional half).

    Which reference group a frame reads is the layout's per-frame map
    (:meth:`ItemLayout.frame_groups`): its item's group, or with ``state.tile_frames`` Hallo's
    tiling, where the reader takes bank slot 0 as a (B, L, C) tensor and repeats it F times along
    the batch, so frame-row r reads group r mod B; the motion-frame slots stay per item (hallo,
    ``hallo/models/mutual_self_attention.py`` at 8fd7c57, the ``MODE == "read"`` branch). Banks
    rounded to fp16 (``state.bank_dtype``) are cast back to the compute dtype here and in the
    motion modules (Hallo: ``torch.cat`` with the fp32 tokens promotes them; the motion frames
    are cast ``.to(hidden_states.dtype)`` in ``hallo/models/unet_3d_blocks.py``).

    ``enabled`` False makes it plain self-attention (reference-feature removal).
    """

    def __init__(self, state: ReferenceState, key: str):
        self.state, self.key = state, key
        self.enabled = True
        self.token_index: torch.Tensor | None = None  # DFA: only these reference tokens

    def reference_tokens(self, batch: int) -> torch.Tensor | None:
        st = self.state
        bank = st.banks.get(self.key) if st.mode == "read" else None
        if bank is None:
            return None
        layout = st.layout
        if layout is None or len(layout) != batch:
            raise RuntimeError(f"reference layout for {batch} items not set (got {layout})")
        return bank

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        st = self.state
        f = st.num_frames
        bank = self.reference_tokens(hidden_states.shape[0] // f)
        if bank is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        layout = st.layout
        groups = layout.group_index(bank.device)
        if bank.shape[1] > 1:
            st.motion[self.key] = bank[:, 1:].index_select(0, groups)  # (B, M, L, C)
        if not self.enabled:
            return plain_attention(attn, hidden_states)
        n_all = hidden_states
        fmap = layout.frame_groups(f, True) if st.tile_frames else None  # per-frame groups
        outs = []
        for start, stop, use_ref in _runs(layout.use_ref):
            n = n_all[start * f : stop * f]
            if not use_ref:
                outs.append(plain_attention(attn, n))
                continue
            if fmap is not None:
                k_ref, v_ref = self._tiled_kv(attn, bank, n.dtype, sum(fmap[start:stop], ()))
            else:
                ref = bank[:, 0].index_select(0, groups[start:stop]).to(n.dtype)  # (b, L, C)
                if self.token_index is not None:
                    ref = ref.index_select(1, self.token_index)
                b, l, c = ref.shape
                k_ref = attn.to_k(ref).unsqueeze(1).expand(b, f, l, -1).reshape(b * f, l, -1)
                v_ref = attn.to_v(ref).unsqueeze(1).expand(b, f, l, -1).reshape(b * f, l, -1)
            k = torch.cat([attn.to_k(n), k_ref], dim=1)
            v = torch.cat([attn.to_v(n), v_ref], dim=1)
            outs.append(attend(attn, attn.to_q(n), k, v))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def _tiled_kv(self, attn, bank: torch.Tensor, dtype: torch.dtype, rows: tuple[int, ...]):
        """Reference K/V for frame-rows reading the groups ``rows`` (one per row): every group's
        reference projected once, then gathered per row."""
        ref = bank[:, 0].to(dtype)  # (G, L, C)
        if self.token_index is not None:
            ref = ref.index_select(1, self.token_index)
        return gather_rows(attn.to_k(ref), rows), gather_rows(attn.to_v(ref), rows)
