"""MEMO's building blocks in our module tree (echomimic_memo.md §2.2): the emotion-conditioned
LayerNorm, the joint audio-visual audio module that carries the audio stream, and the memory-based
linear attention of its motion modules. Names and shapes follow memo_keys.json (facts read from
memoavatar/memo at a5aee30: memo/models/attention.py ``EmoAdaLayerNorm`` and
``JointAudioTemporalBasicTransformerBlock``, memo/models/transformer_3d.py ``Transformer3DModel``
with ``use_audio_module``, memo/models/attention_processor.py ``JointAttnProcessor2_0`` and
``MemoryLinearAttnProcessor``); every line is our own and uses diffusers' ``Attention``,
``FeedForward`` and ``LabelEmbedding`` for the layers.

:class:`~talkfast.models.unet.TalkingUNet` builds them where the ``memo`` preset's switches say
(``audio_module="joint"``, ``motion_attention="memory"``, ``reference_tail_norm_only``); each is
pinned by a hand-computed case in tests/test_memo_layers.py.

How the memory runs here: MEMO's processors update their memory inside the first denoising call
of a clip (``update_past_memory`` at step 0; reset and rebuilt at every call of the first clip,
``is_new_audio``) from the past frames' reference features, which do not depend on the noisy
latent. talkfast makes that update once per clip, right after the reference pass
(:meth:`TalkingHeadNet.update_motion_memory`), and every denoising call only reads the memory: the
same memory at every call of every clip (in the first clip a rebuild from the same frames gives
the same memory), the motion-frame projections computed once per clip instead of at every call of
the first clip, and no call of a clip is special (a step-caching accelerator may reduce step 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from .attention import ReferenceState, gather_rows, merge_heads, multihead_sdpa, project_out
from .layers import MotionModule, _attention, _grid, _tokens, pointwise

EMOTIONS = 9  # emotion classes; index 9 (the 10th embedding row) is the unconditional "no emotion"
MEMORY_DECAY = 0.9  # MemoryLinearAttnProcessor.decay


class EmoAdaLayerNorm(nn.Module):
    """Non-affine LayerNorm(eps 1e-5), then ``* (1 + scale) + shift`` with [shift, scale] =
    Linear(SiLU(embedding[emotion])). ``emotion`` (E,) long; the N rows of ``x`` (N, T, C) are E
    consecutive groups of N/E rows, group e modulated by emotion[e] (MEMO's repeat_interleave)."""

    def __init__(self, dim: int, drop_rate: float = 0.05):
        super().__init__()
        # dropout > 0 adds the unconditional row: EMOTIONS + 1 = 10 rows (memo_keys.json)
        self.class_embedder = LabelEmbedding(EMOTIONS, dim, drop_rate)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        emb = self.class_embedder.embedding_table(emotion)  # no label dropout at inference
        shift, scale = self.adaLN_modulation(emb).chunk(2, dim=1)
        rows = x.shape[0] // emotion.shape[0]
        shift = shift.repeat_interleave(rows, dim=0).unsqueeze(1)
        scale = scale.repeat_interleave(rows, dim=0).unsqueeze(1)
        return self.norm(x) * (1 + scale) + shift


class JointSDPAProcessor:
    """One SDPA over the concatenated [visual ; audio] tokens (queries, keys and values from
    ``to_q/k/v`` and ``add_q/k/v_proj``); the outputs split back, through ``to_out`` and (where
    the layer has it) ``to_add_out``. Returns (visual, audio or None)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, **_):
        n = hidden_states.shape[1]
        q = torch.cat([attn.to_q(hidden_states), attn.add_q_proj(encoder_hidden_states)], dim=1)
        k = torch.cat([attn.to_k(hidden_states), attn.add_k_proj(encoder_hidden_states)], dim=1)
        v = torch.cat([attn.to_v(hidden_states), attn.add_v_proj(encoder_hidden_states)], dim=1)
        out = multihead_sdpa(q, k, v, attn.heads)
        visual = project_out(attn, out[:, :n])
        audio = attn.to_add_out(out[:, n:]) if getattr(attn, "to_add_out", None) is not None else None
        return visual, audio


class JointAudioBlock(nn.Module):
    """MEMO's JointAudioTemporalBasicTransformerBlock on visual tokens h (N, HW, Ci) and the audio
    stream a (N, T, A): self-attention on each, joint attention, feed-forward on each (all with
    residuals; every norm but norm3/audio_norm3 emotion-conditioned). ``final``: the last module
    of the UNet, without ``to_add_out``, ``audio_ff`` and ``audio_norm3``; its audio output is None."""

    def __init__(self, dim: int, heads: int, audio_dim: int, final: bool = False, drop_rate: float = 0.05):
        super().__init__()
        head_dim = dim // heads
        self.final = final
        self.norm1 = EmoAdaLayerNorm(dim, drop_rate)
        self.attn1 = _attention(dim, heads, head_dim=head_dim)
        self.audio_norm1 = EmoAdaLayerNorm(audio_dim, drop_rate)
        self.audio_attn1 = _attention(audio_dim, heads, head_dim=head_dim)  # audio_dim -> Ci -> audio_dim
        self.norm2 = EmoAdaLayerNorm(dim, drop_rate)
        self.audio_norm2 = EmoAdaLayerNorm(audio_dim, drop_rate)
        self.attn2 = Attention(dim, heads=heads, dim_head=head_dim, bias=False, out_bias=True,
                               added_kv_proj_dim=audio_dim, added_proj_bias=True, out_dim=dim,
                               out_context_dim=audio_dim, context_pre_only=final, processor=JointSDPAProcessor())
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        if not final:
            self.audio_ff = FeedForward(audio_dim, activation_fn="geglu")
            self.audio_norm3 = nn.LayerNorm(audio_dim)

    def forward(self, h: torch.Tensor, a: torch.Tensor, emotion: torch.Tensor):
        n_h, n_a = self.norm1(h, emotion), self.audio_norm1(a, emotion)
        h = self.attn1(n_h) + h
        a = self.audio_attn1(n_a) + a
        jh, ja = self.attn2(self.norm2(h, emotion), self.audio_norm2(a, emotion))
        h = h + jh
        h = self.ff(self.norm3(h)) + h
        if self.final:
            return h, None
        a = a + ja
        return h, self.audio_ff(self.audio_norm3(a)) + a


class JointAudioModule(nn.Module):
    """MEMO's ``audio_modules.j`` (Transformer3DModel with ``use_audio_module``): GroupNorm(eps
    1e-6) -> 1x1 proj_in C->Ci -> :class:`JointAudioBlock` -> proj_out -> + x. Returns (x', a'):
    the audio stream leaves as block output + block input (the block has its own residuals, so the
    stream roughly doubles per module, as released); None from the final module."""

    def __init__(self, channels: int, inner: int, heads: int, audio_dim: int, groups: int, final: bool = False,
                 drop_rate: float = 0.05):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([JointAudioBlock(inner, heads, audio_dim, final, drop_rate)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor):
        _, _, hh, ww = x.shape
        t, a = self.transformer_blocks[0](pointwise(self.proj_in, _tokens(self.norm(x))), audio, emotion)
        out = _grid(pointwise(self.proj_out, t), hh, ww) + x
        return out, (None if a is None else a + audio)


@dataclass
class LinearMemory:
    """One temporal attention block's long-term memory: KV (R, d, d) and Z (R, 1, d), R = rows of
    (batch x pixels x heads); None before the first update."""

    kv: torch.Tensor | None = None
    z: torch.Tensor | None = None

    def reset(self) -> None:
        self.kv = self.z = None

    def update(self, motion_k: torch.Tensor, motion_v: torch.Tensor, decay: float = MEMORY_DECAY) -> None:
        """Fold in the motion frames' keys (already softmaxed over their M frames) and values,
        (R, M, d): frame j weighted by decay^(M-1-j) (the newest weighs 1); the old memory decays by
        decay^M."""
        m = motion_k.shape[1]
        w = decay ** torch.arange(m - 1, -1, -1, device=motion_k.device, dtype=motion_k.dtype).view(1, m, 1)
        k, v = motion_k * w, motion_v * w
        kv, z = torch.einsum("bmi,bmj->bij", k, v), k.sum(dim=1, keepdim=True)
        if self.kv is None:
            self.kv, self.z = kv, z
        else:
            self.kv, self.z = self.kv * decay**m + kv, self.z * decay**m + z


def memory_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, memory: LinearMemory,
                            scale: float, decay: float = MEMORY_DECAY) -> torch.Tensor:
    """MEMO's linear attention over the F frames of (R, F, d) rows: Q = softmax(q) over d times
    ``scale``, K = softmax(k) over frames; out = Q (decay KV_mem + K^T V) / clamp(Q (decay Z_mem +
    sum K)^T, 1e-10). An empty memory counts as zero."""
    q = torch.softmax(q, dim=-1) * scale
    k = torch.softmax(k, dim=-2)
    kv = torch.einsum("bfi,bfj->bij", k, v)
    z = k.sum(dim=1, keepdim=True)
    if memory.kv is not None:
        kv, z = decay * memory.kv + kv, decay * memory.z + z
    return torch.einsum("bfi,bij->bfj", q, kv) / torch.einsum("bfi,boi->bfo", q, z).clamp(min=1e-10)


def _head_rows(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(R, F, heads * d) -> (R * heads, F, d), rows in (r, head) order (diffusers' head_to_batch_dim)."""
    r, f, inner = x.shape
    return x.reshape(r, f, heads, inner // heads).permute(0, 2, 1, 3).reshape(r * heads, f, inner // heads)


class MemoryAttnProcessor:
    """MEMO's temporal attention (``MemoryLinearAttnProcessor``): :func:`memory_linear_attention`
    of the frames of each row, with this block's long-term memory. The memory holds G reference
    groups (CFG halves) of R rows each (R = pixels x heads), made by :meth:`remember`; a call reads
    for each of its items the rows of the group ``memory_groups`` names (several steps or one CFG
    half in a call tile the memory along the batch)."""

    def __init__(self):
        self.memory = LinearMemory()
        self.groups = 0

    def reset(self) -> None:
        self.memory.reset()
        self.groups = 0

    def remember(self, motion_k: torch.Tensor, motion_v: torch.Tensor, groups: int) -> None:
        """Fold the past frames of ``groups`` groups into the memory: (G*R, M, d) keys (softmaxed
        over the M frames) and values."""
        if self.memory.kv is not None and self.groups != groups:
            raise RuntimeError(f"the memory holds {self.groups} reference groups, this update {groups}")
        self.memory.update(motion_k, motion_v)
        self.groups = groups

    def rows(self, memory_groups: tuple[int, ...] | None, heads: int,
             positions: torch.Tensor | None = None) -> LinearMemory:
        """The memory rows of a call whose items read the groups ``memory_groups``; ``positions``
        (DFA on the temporal attention): only those token positions of each item."""
        mem = self.memory
        if mem.kv is None or memory_groups is None:
            return LinearMemory()  # no memory yet: the frames of the call alone
        parts = []
        for t in (mem.kv, mem.z):
            per = t.reshape(self.groups, -1, heads, *t.shape[1:])  # (G, positions, heads, ., d)
            if positions is not None:
                per = per.index_select(1, positions)
            parts.append(gather_rows(per, memory_groups).reshape(-1, *t.shape[1:]))
        return LinearMemory(*parts)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, memory_groups: tuple[int, ...] | None = None,
                 positions: torch.Tensor | None = None):
        if attention_mask is not None or encoder_hidden_states is not None:
            raise NotImplementedError("memory attention is self-attention over frames without a mask")
        h = attn.heads
        q, k, v = (_head_rows(proj(hidden_states), h) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = memory_linear_attention(q, k, v, self.rows(memory_groups, h, positions), attn.scale)
        r, f, d = out.shape
        return project_out(attn, merge_heads(out.reshape(r // h, h, f, d)))


def use_memory_attention(module: MotionModule, source: str) -> None:
    """Make ``module`` a MEMO memory motion module whose past frames are the reference feature
    ``source``; ``module.memory`` lists its attention blocks' processors (which hold the memory,
    whatever wraps them later)."""
    module.source = source
    module.memory = []
    for attn in module.temporal_transformer.transformer_blocks[0].attention_blocks:
        module.memory.append(MemoryAttnProcessor())
        attn.set_processor(module.memory[-1])


@torch.no_grad()
def remember_frames(module: MotionModule, frames: torch.Tensor, reset: bool) -> None:
    """Update every memory of a memory motion module from its past frames ``frames`` (G, M, L, C)
    (G reference groups, M frames of L tokens, oldest first): MEMO's motion frames go through the
    module's GroupNorm and proj_in, then per attention block through its LayerNorm to to_k/to_v,
    with no positional encoding and never through the blocks' attention (memoavatar/memo a5aee30,
    memo/models/motion_module.py ``TemporalLinearAttnTransformer``); ``reset`` empties the memory
    first (a new audio)."""
    tt = module.temporal_transformer
    g, m, l, c = frames.shape
    x = tt.proj_in(tt.norm(frames.reshape(g * m, l, c).transpose(1, 2)).transpose(1, 2))  # (G*M, L, C)
    x = x.reshape(g, m, l, c).transpose(1, 2).reshape(g * l, m, c)
    block = tt.transformer_blocks[0]
    for attn, norm, proc in zip(block.attention_blocks, block.norms, module.memory):
        n = norm(x)
        k = torch.softmax(_head_rows(attn.to_k(n), attn.heads), dim=-2)
        v = _head_rows(attn.to_v(n), attn.heads)
        if reset:
            proc.reset()
        proc.remember(k, v, g)


class ReferenceTail(nn.Module):
    """The reference net's last transformer block in MEMO (``is_final_block``): GroupNorm ->
    proj_in -> norm1, whose tokens it records; its output is never used, so it returns its input.
    Keys: ``norm``, ``proj_in``, ``transformer_blocks.0.norm1``."""

    def __init__(self, channels: int, groups: int, eps: float, key: str, state: ReferenceState):
        super().__init__()
        self.key, self.state = key, state
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        block = nn.Module()
        block.norm1 = nn.LayerNorm(channels)
        self.transformer_blocks = nn.ModuleList([block])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.state.record(self.key, self.transformer_blocks[0].norm1(pointwise(self.proj_in, _tokens(self.norm(x)))))
        return x
