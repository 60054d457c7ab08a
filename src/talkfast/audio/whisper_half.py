"""EchoMimic's whisper encoder in half precision (fp16/bf16), from a transformers ``WhisperEncoder``.

EchoMimic (antgroup/echomimic a53e970, ``src/models/whisper/whisper/model.py`` and
``transcribe.py``) keeps the whisper weights in fp32 and feeds an fp16 mel: its ``Linear`` and
``Conv1d`` cast the weights to the input's dtype per call, its ``LayerNorm`` runs on ``x.float()``
and casts back, the attention softmax runs on ``(q @ k).float()`` and the fp32 positional table is
added before casting back. :func:`echomimic_encoder_states` follows that order of operations on
the (fp32) parameters of the transformers module that :mod:`talkfast.audio.whisper` loads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["echomimic_encoder_states"]


def _cast_linear(m, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight.to(x.dtype), None if m.bias is None else m.bias.to(x.dtype))


def _fp32_norm(m, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), m.normalized_shape, m.weight.float(), m.bias.float(), m.eps).to(x.dtype)


@torch.no_grad()
def echomimic_encoder_states(encoder, mel: torch.Tensor) -> torch.Tensor:
    """EchoMimic's ``AudioEncoder.forward(x, include_embeddings=True)`` embeddings in ``mel``'s dtype:
    ``(B, n_ctx, n_layers + 1, D)`` (the positional-embedded input and every block's output, before
    ``ln_post``), computed from a transformers ``WhisperEncoder``'s (fp32) parameters with
    EchoMimic's precision rules (``src/models/whisper/whisper/model.py`` at a53e970): weights cast
    to the input dtype per op, LayerNorm in fp32, softmax in fp32 on the ``head_dim ** -0.25``-scaled
    ``q @ k``, the positional table added in fp32. ``mel`` (B, n_mels, 2 * n_ctx)."""
    dt = mel.dtype
    x = F.gelu(F.conv1d(mel, encoder.conv1.weight.to(dt), encoder.conv1.bias.to(dt), padding=1))
    x = F.gelu(F.conv1d(x, encoder.conv2.weight.to(dt), encoder.conv2.bias.to(dt), stride=2, padding=1))
    x = x.permute(0, 2, 1)
    x = (x + encoder.embed_positions.weight[: x.shape[1]]).to(dt)
    states = [x]
    for layer in encoder.layers:
        att = layer.self_attn
        h = _fp32_norm(layer.self_attn_layer_norm, x)
        b, n, d = h.shape
        heads = int(att.num_heads)
        scale = (d // heads) ** -0.25
        q = _cast_linear(att.q_proj, h).view(b, n, heads, -1).permute(0, 2, 1, 3) * scale
        k = _cast_linear(att.k_proj, h).view(b, n, heads, -1).permute(0, 2, 3, 1) * scale
        v = _cast_linear(att.v_proj, h).view(b, n, heads, -1).permute(0, 2, 1, 3)
        w = torch.softmax((q @ k).float(), dim=-1).to(q.dtype)
        x = x + _cast_linear(att.out_proj, (w @ v).permute(0, 2, 1, 3).flatten(start_dim=2))
        h = _fp32_norm(layer.final_layer_norm, x)
        x = x + _cast_linear(layer.fc2, F.gelu(_cast_linear(layer.fc1, h)))
        states.append(x)
    return torch.stack(states, dim=2)
