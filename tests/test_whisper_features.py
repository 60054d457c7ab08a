"""EchoMimic's whisper-tiny audio front end (talkfast.audio.whisper) on a tiny random whisper.

The fake ``whisper_tiny.pt`` is written here in openai-whisper key names with the real context
length (1500 positions, 3000 mel frames per 30 s segment) but width 8, 2 heads, 4 blocks. The
encoder states are checked against a plain-torch re-computation of openai's AudioEncoder written
out below, so they do not rest on transformers alone. Set ``TALKFAST_ECHOMIMIC_SRC`` to a checkout
of antgroup/echomimic to compare the filterbank with its ``mel_filters.npz`` entry by entry (the
pinned numbers below were read from that file at commit a53e970).
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkfast.audio.whisper import (
    WhisperFeatures,
    convert_openai_state_dict,
    hf_to_openai_key,
    openai_to_hf_key,
    whisper_config_from_dims,
    whisper_frame_count,
    whisper_log_mel,
    whisper_mel_filters,
    whisper_rows,
    whisper_window_rows,
    whisper_windows,
)
from talkfast.errors import CheckpointError, InputError
from talkfast.io.audio import Audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 4,
        "n_vocab": 10, "n_text_ctx": 6, "n_text_state": 8, "n_text_head": 2, "n_text_layer": 1}
D, HEADS, BLOCKS = 8, 2, 4


def _linear(sd, g, name, fan_out, fan_in, bias=True):
    sd[name + ".weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
    if bias:
        sd[name + ".bias"] = 0.1 * torch.randn(fan_out, generator=g)


def _norm(sd, g, name, d):
    sd[name + ".weight"] = 1.0 + 0.1 * torch.randn(d, generator=g)
    sd[name + ".bias"] = 0.1 * torch.randn(d, generator=g)


def openai_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under openai-whisper's names and shapes (whisper/model.py)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    sd["encoder.conv1.weight"] = torch.randn(D, 80, 3, generator=g) / math.sqrt(240)
    sd["encoder.conv1.bias"] = 0.1 * torch.randn(D, generator=g)
    sd["encoder.conv2.weight"] = torch.randn(D, D, 3, generator=g) / math.sqrt(3 * D)
    sd["encoder.conv2.bias"] = 0.1 * torch.randn(D, generator=g)
    sd["encoder.positional_embedding"] = torch.randn(1500, D, generator=g)
    for side, n, cross in (("encoder", BLOCKS, False), ("decoder", DIMS["n_text_layer"], True)):
        for i in range(n):
            p = f"{side}.blocks.{i}."
            for attn in ("attn", "cross_attn") if cross else ("attn",):
                _linear(sd, g, p + attn + ".query", D, D)
                _linear(sd, g, p + attn + ".key", D, D, bias=False)
                _linear(sd, g, p + attn + ".value", D, D)
                _linear(sd, g, p + attn + ".out", D, D)
                _norm(sd, g, p + attn + "_ln", D)
            _linear(sd, g, p + "mlp.0", 4 * D, D)
            _linear(sd, g, p + "mlp.2", D, 4 * D)
            _norm(sd, g, p + "mlp_ln", D)
    _norm(sd, g, "encoder.ln_post", D)
    sd["decoder.token_embedding.weight"] = torch.randn(DIMS["n_vocab"], D, generator=g)
    sd["decoder.positional_embedding"] = torch.randn(DIMS["n_text_ctx"], D, generator=g)
    _norm(sd, g, "decoder.ln", D)
    return sd


def reference_states(sd, mel: torch.Tensor) -> torch.Tensor:
    """openai's AudioEncoder.forward(include_embeddings=True), written out: (1500, 5, D) float64."""
    w = {k: v.double() for k, v in sd.items()}
    x = F.gelu(F.conv1d(mel.double()[None], w["encoder.conv1.weight"], w["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2, padding=1))
    x = x[0].T + w["encoder.positional_embedding"]  # (1500, D)
    states = [x]
    dh = D // HEADS
    for i in range(BLOCKS):
        p = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (D,), w[p + "attn_ln.weight"], w[p + "attn_ln.bias"], eps=1e-5)
        q = (h @ w[p + "attn.query.weight"].T + w[p + "attn.query.bias"]).reshape(-1, HEADS, dh).transpose(0, 1)
        k = (h @ w[p + "attn.key.weight"].T).reshape(-1, HEADS, dh).transpose(0, 1)
        v = (h @ w[p + "attn.value.weight"].T + w[p + "attn.value.bias"]).reshape(-1, HEADS, dh).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1) @ v  # (H, T, dh)
        x = x + att.transpose(0, 1).reshape(-1, D) @ w[p + "attn.out.weight"].T + w[p + "attn.out.bias"]
        h = F.layer_norm(x, (D,), w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"], eps=1e-5)
        x = x + F.gelu(h @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"]) @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"]
        states.append(x)
    return torch.stack(states, dim=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    sd = openai_state_dict()
    path = tmp_path_factory.mktemp("whisper") / "whisper_tiny.pt"
    torch.save({"dims": DIMS, "model_state_dict": sd}, path)
    return path, sd


@pytest.fixture(scope="module")
def features(ckpt):
    return WhisperFeatures(ckpt[0])


def _speech_like(seconds: float, seed: int = 0, loud_until: float | None = None) -> np.ndarray:
    n = round(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0) + 0.01 * rng.standard_normal(n)
    if loud_until is not None:
        x[: int(loud_until * SR)] *= 20.0
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------ log-mel


def test_mel_filters_equal_whisper_npz():
    fb = whisper_mel_filters().double().numpy()
    assert fb.shape == (80, 201)
    # Read from src/models/whisper/whisper/assets/mel_filters.npz ("mel_80", float32) at a53e970.
    assert fb.sum() == pytest.approx(1.999024092387117, rel=1e-6)
    assert int((fb > 0).sum()) == 391
    assert np.unravel_index(fb.argmax(), fb.shape) == (13, 13) and fb.max() == pytest.approx(0.025880683213472366, rel=1e-6)
    for row, first, last, total in ((0, 1, 1, 0.02486259490251541), (10, 10, 11, 0.024862592574208975),
                                    (40, 42, 44, 0.026664861012250185), (79, 186, 199, 0.024925339792389423)):
        nz = np.nonzero(fb[row])[0]
        assert (nz.min(), nz.max()) == (first, last) and fb[row].sum() == pytest.approx(total, rel=1e-6)
    assert fb[0, 1] == pytest.approx(0.02486259490251541, rel=1e-6)
    assert fb[79, 190] == pytest.approx(0.0022320549469441175, rel=1e-6)
    src = os.environ.get("TALKFAST_ECHOMIMIC_SRC")
    if src:
        npz = Path(src) / "src/models/whisper/whisper/assets/mel_filters.npz"
        with np.load(npz) as f:
            np.testing.assert_allclose(fb, f["mel_80"], rtol=0, atol=3e-9)  # 1 float32 ulp at 0.026


def test_log_mel_hand_case():
    """Numpy re-computation of step 2 on 0.5 s: a loud tone, then silence that the clamp lifts."""
    wave = np.zeros(8000, np.float32)
    wave[:4000] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(4000) / SR)
    mel = whisper_log_mel(wave).double().numpy()
    assert mel.shape == (80, 8000 // 160)  # 51 centred STFT frames, the last one dropped
    padded = np.pad(wave.astype(np.float64), 200, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    frames = np.stack([padded[j * 160 : j * 160 + 400] * hann for j in range(50)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (50, 201)
    log10 = np.log10(np.maximum(whisper_mel_filters().double().numpy() @ power.T, 1e-10))
    expected = (np.maximum(log10, log10.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(mel, expected, atol=2e-5)
    # Frames 27.. (window from 27 * 160 - 200 = 4120 on) see only zeros: log10 = -10, clamped to
    # max - 8, which after (x + 4) / 4 is exactly 2 below the normalised maximum.
    np.testing.assert_allclose(mel[:, 27:], mel.max() - 2.0, rtol=0, atol=1e-6)
    assert float(mel[:, 26].max()) > float(mel.max()) - 1.9


def test_log_mel_equals_hf_feature_extractor():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    long = _speech_like(35.0, loud_until=3.0)
    long[31 * SR : 32 * SR] = 0.0  # silence, where the clamp decides the value
    hf_long = fe(long, sampling_rate=SR, padding="longest", truncation=False, return_tensors="np").input_features[0]
    ours = whisper_log_mel(long).numpy()
    assert hf_long.shape == ours.shape == (80, 3500)
    np.testing.assert_allclose(ours, hf_long, rtol=0, atol=1e-6)  # global max, no padding: the same
    exact = long[: 30 * SR]
    hf30 = fe(exact, sampling_rate=SR, return_tensors="np").input_features[0]
    np.testing.assert_allclose(whisper_log_mel(exact).numpy(), hf30, rtol=0, atol=1e-6)
    # By default HF truncates to 30 s and pads the waveform: padded frames sit at max - 8, not at 0.
    short = long[: 10 * SR]
    hf10 = fe(short, sampling_rate=SR, return_tensors="np").input_features[0]
    ours10 = whisper_log_mel(short).numpy()
    np.testing.assert_allclose(ours10[:, :-1], hf10[:, :999], rtol=0, atol=1e-6)
    assert not np.allclose(ours10[:, -1], hf10[:, 999], atol=1e-4)  # 10 s = 1000 * 160: last frame sees HF's zeros
    np.testing.assert_allclose(hf10[:, 1002:], ours10.max() - 2.0, rtol=0, atol=1e-6)  # EchoMimic pads with 0
    # A per-30-s clamp (HF on each chunk) differs from EchoMimic's global one after a loud start.
    chunk = long[30 * SR :]
    hf_chunk = fe(chunk, sampling_rate=SR, padding="longest", truncation=False, return_tensors="np").input_features[0]
    np.testing.assert_allclose(ours[:, 3102:3198], ours.max() - 2.0, rtol=0, atol=1e-6)
    assert hf_chunk.min() < ours[:, 3102:3198].min() - 0.4


# --------------------------------------------------------------------------------- checkpoint


def test_converter_round_trip(ckpt):
    from transformers import WhisperModel

    _, sd = ckpt
    hf = convert_openai_state_dict(sd)
    model_sd = WhisperModel(whisper_config_from_dims(DIMS)).state_dict()
    assert set(hf) == set(model_sd) and len(hf) == len(sd)
    assert all(tuple(hf[k].shape) == tuple(model_sd[k].shape) for k in hf)
    assert {hf_to_openai_key(k) for k in hf} == set(sd)
    assert all(hf_to_openai_key(openai_to_hf_key(k)) == k for k in sd)
    assert openai_to_hf_key("encoder.blocks.3.attn.query.weight") == "encoder.layers.3.self_attn.q_proj.weight"
    assert openai_to_hf_key("decoder.blocks.0.cross_attn_ln.bias") == "decoder.layers.0.encoder_attn_layer_norm.bias"
    assert openai_to_hf_key("encoder.positional_embedding") == "encoder.embed_positions.weight"
    assert openai_to_hf_key("encoder.ln_post.weight") == "encoder.layer_norm.weight"
    assert openai_to_hf_key("encoder.blocks.0.cross_attn.query.weight") is None
    assert openai_to_hf_key("encoder.blocks.0.mlp.1.weight") is None
    with pytest.raises(CheckpointError, match="not.a.key"):
        convert_openai_state_dict({**sd, "not.a.key": torch.zeros(1)})


def test_checkpoint_errors(ckpt, tmp_path):
    _, sd = ckpt

    def write(obj, name="w.pt"):
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    bad = dict(sd)
    del bad["encoder.blocks.1.mlp_ln.bias"]
    bad["encoder.blocks.0.attn.key.bias"] = torch.zeros(D)
    bad["encoder.extra"] = torch.zeros(1)
    bad["encoder.blocks.2.mlp.0.weight"] = torch.zeros(4 * D, D + 1)
    with pytest.raises(CheckpointError) as err:
        WhisperFeatures(write({"dims": DIMS, "model_state_dict": bad}))
    msg = str(err.value)
    assert "missing: encoder.blocks.1.mlp_ln.bias" in msg
    assert "encoder.blocks.0.attn.key.bias" in msg and "encoder.extra" in msg
    assert "encoder.blocks.2.mlp.0.weight (32, 9) (model (32, 8))" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        WhisperFeatures(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="'dims' and 'model_state_dict'"):
        WhisperFeatures(write({"state_dict": sd}))
    with pytest.raises(CheckpointError, match="n_audio_ctx"):
        WhisperFeatures(write({"dims": {k: v for k, v in DIMS.items() if k != "n_audio_ctx"}, "model_state_dict": sd}))
    with pytest.raises(CheckpointError, match="could not read"):  # weights_only refuses arbitrary objects
        WhisperFeatures(write({"dims": DIMS, "model_state_dict": sd, "x": Path("p")}))
    # Only the encoder is needed: a file without the decoder loads.
    enc_only = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    assert len(enc_only) == 67  # as in the real whisper-tiny (4 blocks)
    WhisperFeatures(write({"dims": DIMS, "model_state_dict": enc_only}))


# ---------------------------------------------------------------------------- encoder states


def test_states_equal_plain_torch_encoder(features, ckpt):
    _, sd = ckpt
    mel = torch.from_numpy(np.random.default_rng(1).uniform(-1.0, 1.5, (80, 3000)).astype(np.float32))
    ref = reference_states(sd, mel)
    got = features.encode_segment(mel)
    assert got.shape == (1500, 5, D) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    # What transformers' hidden_states hold: [0] = conv/GELU/+positions, the last one after ln_post.
    out = features.encoder(input_features=mel[None], output_hidden_states=True, return_dict=True)
    hs = out.hidden_states
    assert len(hs) == BLOCKS + 1
    torch.testing.assert_close(hs[0][0].double(), ref[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hs[2][0].double(), ref[:, 2], rtol=1e-4, atol=1e-4)
    post = F.layer_norm(ref[:, 4], (D,), sd["encoder.ln_post.weight"].double(), sd["encoder.ln_post.bias"].double())
    torch.testing.assert_close(hs[-1][0].double(), post, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.last_hidden_state, hs[-1])
    assert float((hs[-1][0].double() - ref[:, 4]).abs().max()) > 0.1  # so hidden_states[-1] is not the block output
    # A short segment keeps floor(n / 2) rows of the zero-padded encoding.
    short = features.encode_segment(mel[:, :777])
    padded = F.pad(mel[:, :777], (0, 3000 - 777))
    assert short.shape == (388, 5, D)
    torch.testing.assert_close(short.double(), reference_states(sd, padded)[:388], rtol=1e-4, atol=1e-4)


def test_segments_are_encoded_independently(features, ckpt):
    from transformers import WhisperFeatureExtractor

    _, sd = ckpt
    wave = _speech_like(70.0, seed=2)
    feats = features.encoder_states(wave)
    assert whisper_rows(7000) == 3500 and feats.shape == (3500, 5, D)
    mel = WhisperFeatureExtractor()(wave, sampling_rate=SR, padding="longest", truncation=False,
                                    return_tensors="pt").input_features[0]
    for k, (a, b) in enumerate(((0, 3000), (3000, 6000), (6000, 7000))):
        alone = reference_states(sd, F.pad(mel[:, a:b], (0, 3000 - (b - a))))[: (b - a) // 2]
        torch.testing.assert_close(feats[1500 * k : 1500 * k + (b - a) // 2].double(), alone, rtol=1e-4, atol=1e-4)
    assert whisper_rows(3001) == 1500 and whisper_rows(6003) == 3001 and whisper_rows(1) == 0


# ----------------------------------------------------------------------------------- windows


def _echomimic_count(t50: int, fps: float) -> int:
    """feature2chunks' loop, restated."""
    i, n = 0, 0
    while True:
        start = int(i * 50 / fps)
        n += 1
        i += 1
        if start > t50:
            return n


def test_window_rows_hand_case():
    # T50 = 7 at 24 fps: centres int(i * 50 / 24) = 0, 2, 4, 6, 8 -> frame 4 (8 > 7) is the last one.
    assert whisper_frame_count(7, 24) == 5
    rows = whisper_window_rows(7, 24)
    assert rows.shape == (5, 10)
    assert rows[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert rows[3].tolist() == [2, 3, 4, 5, 6, 6, 6, 6, 6, 6]
    assert rows[4].tolist() == [4, 5, 6, 6, 6, 6, 6, 6, 6, 6]
    assert whisper_window_rows(7, 24, start=3, frames=4).tolist()[0] == rows[3].tolist()
    assert whisper_window_rows(7, 24, start=6, frames=1).tolist() == [[6] * 10]  # past the end: last row
    for fps in (24, 25, 30, 29.97, 12.5, 60):
        for t50 in (1, 7, 50, 499, 1500, 3501):
            assert whisper_frame_count(t50, fps) == _echomimic_count(t50, fps), (t50, fps)
    feats = torch.arange(7 * 5 * 3, dtype=torch.float32).reshape(7, 5, 3)
    out = whisper_windows(feats, 24)
    assert out.shape == (5, 50, 3)
    for t, r in enumerate(rows[3].tolist()):  # time-major, layer-minor
        for layer in range(5):
            assert torch.equal(out[3, t * 5 + layer], feats[r, layer])
    with pytest.raises(InputError):
        whisper_frame_count(7, 0)


# ------------------------------------------------------------------------ whole file vs clips


def test_stream_clips_equal_whole_file(features):
    wave = _speech_like(70.0, seed=3, loud_until=2.0)
    whole = features(wave)
    assert whole.shape == (whisper_frame_count(3500, 24), 50, D) == (1682, 50, D)
    stream = features.stream(wave, cache_segments=0)
    torch.testing.assert_close(stream.segment_mel(1), features.log_mel(wave)[:, 3000:6000], rtol=0, atol=1e-6)
    assert stream.encoded == 0 and stream.t50 == 3500 and stream.num_frames() == 1682
    torch.testing.assert_close(stream.clip(0, 100), whole[:100], rtol=1e-5, atol=1e-5)
    assert stream.encoded == 1  # rows 0..213: segment 0 only
    torch.testing.assert_close(stream.clip(700, 40), whole[700:740], rtol=1e-5, atol=1e-5)  # across 30 s
    assert stream.encoded == 3  # segments 0 and 1 (nothing cached)
    cached = features.stream(wave, cache_segments=2)
    parts = list(cached.clips(100))
    assert [s for s, _ in parts] == list(range(0, 1682, 100)) and parts[-1][1].shape[0] == 82
    torch.testing.assert_close(torch.cat([c for _, c in parts]), whole, rtol=1e-5, atol=1e-5)
    assert cached.encoded == 3  # each segment once
    more = features(wave, num_frames=1690)
    assert torch.equal(more[:1682], whole) and torch.equal(more[-1], more[-8])
    torch.testing.assert_close(features.clip(wave, 1600, 10), whole[1600:1610], rtol=1e-5, atol=1e-5)


def test_inputs(features):
    wave = _speech_like(1.0, seed=4)
    a = features(wave)
    assert a.shape == (whisper_frame_count(50, 24), 50, D) and whisper_frame_count(50, 24) == 26
    torch.testing.assert_close(features(Audio(wave, SR, SR, 1)), a, rtol=0, atol=0)
    torch.testing.assert_close(features(torch.from_numpy(wave)[None]), a, rtol=0, atol=0)
    assert features(wave, fps=25).shape[0] == whisper_frame_count(50, 25)
    with pytest.raises(InputError, match="16000 Hz"):
        features(Audio(wave, 8000, 8000, 1))
    with pytest.raises(InputError, match="too short"):
        features(np.zeros(319, np.float32))
    assert features(np.zeros(320, np.float32)).shape == (whisper_frame_count(1, 24), 50, D)
