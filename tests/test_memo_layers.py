"""MEMO's building blocks (talkfast/models/memo_layers.py): every audio module's keys and shapes
as memo_keys.json lists them (built on ``meta``), and hand-computed tiny cases of the emotion
LayerNorm and the memory linear attention; the joint attention against diffusers' own SD3 joint
processor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from talkfast.models.memo_layers import (EmoAdaLayerNorm, JointAudioModule, LinearMemory,
                                         memory_linear_attention)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "memo_keys.json"


def _diffusion_keys() -> dict[str, list[int]]:
    if not MANIFEST.is_file():
        pytest.skip(f"{MANIFEST.name} is not in ../shared/reference")
    files = json.loads(MANIFEST.read_text())["files"]
    entry = files["diffusion_net/diffusion_pytorch_model.safetensors"]
    return entry.get("keys", entry)


def test_every_audio_module_has_memos_keys_and_shapes():
    keys = _diffusion_keys()
    prefixes = sorted({k.split(".transformer_blocks")[0] for k in keys if ".audio_modules." in k
                       and ".transformer_blocks" in k})
    assert len(prefixes) == 16
    total = 0
    for prefix in prefixes:
        want = {k[len(prefix) + 1:]: list(v) for k, v in keys.items() if k.startswith(prefix + ".")}
        channels, inner = want["norm.weight"][0], want["proj_in.weight"][0]
        audio = want["transformer_blocks.0.audio_norm1.adaLN_modulation.1.weight"][1]
        final = prefix == "up_blocks.3.audio_modules.2"
        with torch.device("meta"):
            m = JointAudioModule(channels, inner, 8, audio, 32, final=final)
        got = {k: list(v.shape) for k, v in m.state_dict().items()}
        assert got == want, prefix
        total += len(got)
    assert total == 840  # every audio key of the diffusion net (2114 = 1274 shared with Hallo + 840)


def test_emotion_layernorm_by_hand():
    ln = EmoAdaLayerNorm(2, drop_rate=0.05)
    assert ln.class_embedder.embedding_table.weight.shape == (10, 2)  # 9 emotions + the unconditional row
    with torch.no_grad():
        ln.class_embedder.embedding_table.weight.zero_()
        ln.class_embedder.embedding_table.weight[3] = torch.tensor([1.0, 0.0])
        lin = ln.adaLN_modulation[1]
        lin.weight.zero_()
        lin.weight[0, 0] = 1.0  # shift_0 = silu(e_0)
        lin.bias.copy_(torch.tensor([0.0, 2.0, 0.5, -1.0]))  # shift = (., 2), scale = (0.5, -1)
    x = torch.tensor([[[3.0, 1.0]]]).repeat(4, 1, 1)  # LayerNorm: (1, -1) / sqrt(1 + 1e-5)
    out = ln(x, torch.tensor([9, 3]))  # rows 0-1: the unconditional emotion, rows 2-3: emotion 3
    n = 1 / math.sqrt(1 + 1e-5)
    silu1 = 1 / (1 + math.exp(-1))
    want = torch.tensor([[n * 1.5, 2.0], [n * 1.5, 2.0], [n * 1.5 + silu1, 2.0], [n * 1.5 + silu1, 2.0]])
    torch.testing.assert_close(out[:, 0], want)


def test_memory_linear_attention_by_hand():
    """d = 1 (the softmax over d is 1, scale 1): without memory the output is the frames' values
    averaged by softmax(k) over frames; the memory adds decay-weighted motion-frame terms."""
    q = torch.tensor([[[5.0], [-2.0]]])
    k = torch.tensor([[[0.0], [math.log(3.0)]]])  # softmax over the 2 frames: 0.25, 0.75
    v = torch.tensor([[[2.0], [6.0]]])
    mem = LinearMemory()
    torch.testing.assert_close(memory_linear_attention(q, k, v, mem, 1.0), torch.full((1, 2, 1), 5.0))
    # motion frames (keys already softmaxed) 0.5, 0.5 with values 4, 8; weights 0.9 (older), 1 on both k and v:
    # KV = 0.45 * 3.6 + 0.5 * 8 = 5.62, Z = 0.95
    mem.update(torch.tensor([[[0.5], [0.5]]]), torch.tensor([[[4.0], [8.0]]]))
    torch.testing.assert_close(mem.kv, torch.tensor([[[5.62]]]))
    torch.testing.assert_close(mem.z, torch.tensor([[[0.95]]]))
    want = (0.9 * 5.62 + 5.0) / (0.9 * 0.95 + 1.0)
    torch.testing.assert_close(memory_linear_attention(q, k, v, mem, 1.0), torch.full((1, 2, 1), want))
    # a second update: the old memory decays by 0.9^2
    mem.update(torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[1.0], [0.0]]]))
    torch.testing.assert_close(mem.kv, torch.tensor([[[5.62 * 0.81 + 0.81]]]))
    mem.reset()
    assert mem.kv is None and mem.z is None


def test_joint_attention_matches_diffusers_joint_processor_and_the_stream_doubles():
    torch.manual_seed(0)
    m = JointAudioModule(16, 16, 2, 12, 4).eval()
    final = JointAudioModule(16, 16, 2, 12, 4, final=True).eval()
    for p in [*m.parameters(), *final.parameters()]:
        torch.nn.init.normal_(p, std=0.2)
    x, a, emo = torch.randn(4, 16, 3, 3), torch.randn(4, 5, 12), torch.tensor([9, 2])
    block = m.transformer_blocks[0]
    h, c = torch.randn(4, 9, 16), torch.randn(4, 5, 12)
    ours = block.attn2(h, c)
    block.attn2.set_processor(JointAttnProcessor2_0())
    theirs = block.attn2(h, c)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t)
    block.attn2.set_processor(type(final.transformer_blocks[0].attn2.processor)())
    with torch.no_grad():
        out, audio = m(x, a, emo)
        t = m.proj_in(m.norm(x)).permute(0, 2, 3, 1).reshape(4, 9, 16)
        _, a_block = block(t, a, emo)
        out_f, audio_f = final(x, a, emo)
    assert out.shape == x.shape and out_f.shape == x.shape and audio_f is None
    torch.testing.assert_close(audio, a_block + a)  # block output (with its own residuals) + the input
