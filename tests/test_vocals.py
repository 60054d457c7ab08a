"""talkfast.audio.vocals: MDX-Net vocal separation as audio-separator 0.17.2 (Hallo) / 0.24.1 (MEMO) runs it.

STFT/ISTFT and the chunked cross-faded demix are pinned against audio-separator's own code (the
installed 0.47.1, whose ``uvr_lib_v5/stft.py`` and MDX ``demix`` chunking are those of 0.17.2 and
0.24.1; 0.47.1 only moved the compensate multiply out of ``demix``, which the reference re-applies).
The peak steps against its ``spec_utils.normalize``, int16 by hand. Stand-in ONNX models have
Kim_Vocal_2's signature (input ``input`` [batch, 4, 3072, 256]).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from talkfast.audio import vocals as V
from talkfast.errors import CheckpointError, InputError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
librosa = pytest.importorskip("librosa")
sf = pytest.importorskip("soundfile")

KIM = V.MDX_MODEL_DATA[V.KIM_VOCAL_2_MD5]


def _scale_model(path: Path, scale: float = 1.0, dim_f: int = 3072, dim_t: int = 256, name: str = "input",
                 batch="batch") -> Path:
    """An ONNX stand-in: output = input * scale, with Kim_Vocal_2's input name and shape signature."""
    from onnx import TensorProto, helper

    shape = [batch, 4, dim_f, dim_t]
    graph = helper.make_graph(
        [helper.make_node("Mul", [name, "scale"], ["output"])],
        "mdx_standin",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _reference_separator():
    """audio-separator's MDXSeparator with its demix/run_model, built without its model-loading __init__."""
    sys.modules.setdefault("onnx2torch", types.ModuleType("onnx2torch"))  # imported at module level, unused here
    from audio_separator.separator.architectures.mdx_separator import MDXSeparator

    sep = object.__new__(MDXSeparator)
    sep.logger = logging.getLogger("vocals-test")
    sep.hop_length, sep.segment_size, sep.overlap, sep.batch_size = 1024, 256, 0.25, 1
    sep.n_fft, sep.dim_f, sep.compensate = KIM.n_fft, KIM.dim_f, KIM.compensate
    sep.torch_device = torch.device("cpu")
    sep.enable_denoise = False
    return sep


def _time_gain(spec: np.ndarray) -> np.ndarray:
    """A position-dependent stand-in network (gain varies over frames and bins), to expose chunk misplacement."""
    t = np.linspace(0.5, 1.5, spec.shape[-1], dtype=np.float32)
    f = np.linspace(1.2, 0.8, spec.shape[-2], dtype=np.float32)
    return spec * f[:, None] * t[None, :]


def _tones(seconds: float, rate: int = 44100, peak: float = 0.5, stereo: bool = True) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    left = np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 1000 * t)
    right = np.sin(2 * np.pi * 440 * t + 0.3) + 0.3 * np.sin(2 * np.pi * 2500 * t)
    x = np.stack([left, right]) if stereo else left[None]
    # 0.1 s fades: an abrupt edge leaks below bin 3 (< 17 Hz), which the separator zeroes.
    k = int(0.1 * rate)
    ramp = np.hanning(2 * k)[:k]
    x[:, :k] *= ramp
    x[:, -k:] *= ramp[::-1]
    return (x * (peak / np.abs(x).max())).astype(np.float32)


# --- STFT / ISTFT against audio-separator's STFT class ------------------------------------------------


def test_stft_and_istft_match_audio_separator() -> None:
    from audio_separator.separator.uvr_lib_v5.stft import STFT

    ref = STFT(logging.getLogger("t"), KIM.n_fft, KIM.hop_length, KIM.dim_f, torch.device("cpu"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, KIM.chunk_size)).astype(np.float32) * 0.3
    ours = V.mdx_stft(x, KIM.n_fft, KIM.hop_length, KIM.dim_f)
    theirs = ref(torch.from_numpy(x)).numpy()
    assert ours.shape == (1, 4, KIM.dim_f, KIM.dim_t) == theirs.shape
    np.testing.assert_array_equal(ours, theirs)  # same torch kernel: bit-identical
    spec = rng.standard_normal(ours.shape).astype(np.float32)
    back = V.mdx_istft(spec, KIM.n_fft, KIM.hop_length)
    back_ref = ref.inverse(torch.from_numpy(spec)).numpy()
    assert back.shape == (1, 2, KIM.chunk_size)
    np.testing.assert_array_equal(back, back_ref)


# --- demix: chunking, hanning cross-fade, divider, trim, compensate -----------------------------------


@pytest.mark.parametrize("seconds", [1.3, 10.0])
def test_demix_matches_audio_separator(seconds: float) -> None:
    mix = _tones(seconds)
    mix += np.random.default_rng(1).standard_normal(mix.shape).astype(np.float32) * 0.01
    sep = _reference_separator()
    sep.model_run = lambda spek: _time_gain(spek.cpu().numpy())
    ref = sep.demix(mix.copy())
    ref *= KIM.compensate  # what 0.17.2 / 0.24.1's demix does at its end (0.47.1 moved it out)
    calls = []

    def model(spec):
        calls.append(spec.shape)
        return _time_gain(spec)

    ours = V.demix(mix, model, KIM)
    assert ours.shape == mix.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    # One chunk per call (batch 1); the count is audio-separator's: range(0, padded length, step).
    n = mix.shape[1]
    total = KIM.trim + n + KIM.gen_size + KIM.trim - n % KIM.gen_size
    assert len(calls) == len(range(0, total, int(0.75 * KIM.chunk_size)))
    assert all(s == (1, 4, KIM.dim_f, KIM.dim_t) for s in calls)


def test_demix_identity_reconstructs_band() -> None:
    """Hand check: with an identity net, demix returns the mix x compensate (bins 0-2 and >= dim_f removed)."""
    mix = _tones(3.0)  # 3 s: two overlapping full chunks and the short tail chunks
    out = V.demix(mix, lambda s: s, KIM)
    err = out / np.float32(KIM.compensate) - mix
    assert np.abs(err).max() < 2e-6  # tones at 300-2500 Hz lie inside bins 3..3071 (measured 3e-7)


# --- peak steps and int16 -----------------------------------------------------------------------------


def test_normalize_peak_matches_spec_utils() -> None:
    from audio_separator.separator.uvr_lib_v5 import spec_utils

    rng = np.random.default_rng(2)
    for peak, min_peak in [(1.7, None), (0.3, None), (0.3, 0.6), (0.75, 0.6), (1.2, 0.6)]:
        x = rng.standard_normal((2, 1000)).astype(np.float32)
        x *= np.float32(peak / np.abs(x).max())
        ours = V.normalize_peak(x.copy(), 0.9, min_peak)
        theirs = spec_utils.normalize(x.copy(), max_peak=0.9, min_peak=min_peak)
        # NumPy 2 here rounds the factor via float32 (NEP 50); the originals ran NumPy 1.x (factor in
        # float64, then float32): at most one float32 ulp apart.
        np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=0)
        maxv = np.abs(x).max()
        if maxv > 0.9:
            factor = np.float32(0.9 / np.float64(maxv))
        elif min_peak is not None and maxv < min_peak:
            factor = np.float32(min_peak / np.float64(maxv))
        else:
            factor = np.float32(1.0)
        np.testing.assert_array_equal(ours, x * factor)


def test_int16_truncates_toward_zero() -> None:
    x = np.array([0.5, -0.5, 0.9, -0.9, 1e-5, -1e-5, 0.99999, -1.0], dtype=np.float32)
    # 16383.5 -> 16383, 29490.3 -> 29490, 0.33 -> 0, 32766.67 -> 32766, -32767
    np.testing.assert_array_equal(V.to_int16(x), [16383, -16383, 29490, -29490, 0, 0, 32766, -32767])


def _normalize_numpy1(wave, max_peak, min_peak=None):
    """spec_utils.normalize as NumPy 1.26 (Hallo's and MEMO's pin) evaluates it: ``max_peak / maxv`` is a
    float64 scalar, which ``float32_array *= scalar`` rounds to float32 (value-based casting)."""
    maxv = np.abs(wave).max()
    if maxv > max_peak:
        wave *= np.float32(np.float64(max_peak) / np.float64(maxv))
    elif min_peak is not None and maxv < min_peak:
        wave *= np.float32(np.float64(min_peak) / np.float64(maxv))
    return wave


@pytest.mark.parametrize("chain", ["hallo", "memo"])
def test_separate_mix_matches_recomputation(chain: str) -> None:
    """Input peak, demix x compensate, two output peak steps, int16, re-computed with audio-separator's parts."""
    from audio_separator.separator.uvr_lib_v5 import spec_utils

    min_peak = 0.6 if chain == "memo" else None
    mix = _tones(1.2, peak=0.45)  # memo: raised to 0.6 first
    net = lambda s: _time_gain(s) * np.float32(2.5)  # noqa: E731  output peak > 0.9: capped
    sep = _reference_separator()
    sep.model_run = lambda spek: net(spek.cpu().numpy())

    def reference(normalize):
        m = normalize(mix.copy(), 0.9, min_peak)
        src = sep.demix(m)
        src *= KIM.compensate  # 0.17.2 / 0.24.1 demix's last step
        primary = normalize(src, 0.9, min_peak).T  # MDXSeparator.separate
        primary = normalize(primary, 0.9, min_peak)  # write_audio
        return (primary * 32767).astype(np.int16)

    ours = V.separate_mix(mix, net, KIM, chain)
    assert ours.shape == (mix.shape[1], 2) and ours.dtype == np.int16
    np.testing.assert_array_equal(ours, reference(_normalize_numpy1))
    assert np.abs(ours).max() == 29490  # 0.9 * 32767 = 29490.3, truncated
    # Under this NumPy 2 (NEP 50) audio-separator's own normalize rounds the factor once more in
    # float32: one float32 ulp, which flips a truncation on a few samples (measured 23-24 of 52920).
    theirs = reference(lambda w, mx, mn: spec_utils.normalize(w, max_peak=mx, min_peak=mn))
    diff = np.abs(ours.astype(np.int32) - theirs)
    assert diff.max() <= 1 and np.count_nonzero(diff) <= ours.size // 1000


# --- model file: lookup by md5, signature, errors ------------------------------------------------------


def test_model_hash_is_tail_md5(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    data = np.random.default_rng(3).integers(0, 256, 10000 * 1024 + 4321, dtype=np.uint8).tobytes()
    big.write_bytes(data)
    assert V.model_hash(big) == hashlib.md5(data[-10000 * 1024:]).hexdigest()
    assert V.model_hash(big) != hashlib.md5(data).hexdigest()
    small = tmp_path / "small.onnx"
    small.write_bytes(b"abc")
    assert V.model_hash(small) == hashlib.md5(b"abc").hexdigest()


def test_kim_vocal_2_table_entry() -> None:
    # UVR model_data_new.json entry 970b3f9492014d18fefeedfe4773cb42 (mdx_dim_t_set 8 -> 2**8).
    assert (KIM.dim_f, KIM.dim_t, KIM.n_fft, KIM.compensate, KIM.primary_stem) == (3072, 256, 7680, 1.009, "Vocals")
    assert (KIM.trim, KIM.chunk_size, KIM.gen_size) == (3840, 255 * 1024, 255 * 1024 - 7680)


def test_model_lookup_by_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _scale_model(tmp_path / "Kim_Vocal_2.onnx")
    with pytest.raises(CheckpointError, match=r"Kim_Vocal_2\.onnx.*unknown MDX-Net model"):
        V.MDXModel(path)
    monkeypatch.setitem(V.MDX_MODEL_DATA, V.model_hash(path), KIM)
    model = V.MDXModel(path)
    assert model.params == KIM
    spec = np.random.default_rng(4).standard_normal((1, 4, 3072, 256)).astype(np.float32)
    np.testing.assert_array_equal(model(spec), spec)


@pytest.mark.parametrize(
    "kwargs",
    [dict(dim_f=2048), dict(dim_t=512), dict(name="x"), dict(batch=2)],
    ids=["dim_f", "dim_t", "input-name", "fixed-batch"],
)
def test_wrong_signature_is_checkpoint_error(tmp_path: Path, kwargs: dict) -> None:
    path = _scale_model(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(CheckpointError, match="bad.onnx"):
        V.MDXModel(path, KIM)


def test_missing_and_corrupt_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.onnx.*not found"):
        V.MDXModel(tmp_path / "nope.onnx", KIM)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x80\x04this is not onnx" * 50)
    with pytest.raises(CheckpointError, match="junk.onnx.*not a readable ONNX"):
        V.MDXModel(junk, KIM)
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(_scale_model(tmp_path / "ok.onnx").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="trunc.onnx"):
        V.MDXModel(truncated, KIM)


def test_non_vocal_primary_stem_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    with pytest.raises(CheckpointError, match="Instrumental"):
        V.MDXModel(_scale_model(tmp_path / "inst.onnx"), replace(KIM, primary_stem="Instrumental"))


def test_unknown_md5_without_params_names_file(tmp_path: Path) -> None:
    path = _scale_model(tmp_path / "Other.onnx")
    with pytest.raises(CheckpointError, match=V.model_hash(path)):
        V.separate_vocals(tmp_path / "x.wav", path, "hallo", tmp_path / "w")


# --- audio errors -----------------------------------------------------------------------------------


def test_audio_errors(tmp_path: Path) -> None:
    model = V.MDXModel(_scale_model(tmp_path / "m.onnx"), KIM)
    with pytest.raises(InputError, match="missing.wav.*not found"):
        V.separate_vocals(tmp_path / "missing.wav", model, "hallo", tmp_path / "w")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all")
    for chain in ("hallo", "memo"):
        with pytest.raises(InputError, match="bad.wav"):
            V.separate_vocals(bad, model, chain, tmp_path / "w")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(4410, dtype=np.float32), 44100, subtype="PCM_16")
    with pytest.raises(InputError, match="silent"):
        V.separate_vocals(silent, model, "hallo", tmp_path / "w")
    three = tmp_path / "three.wav"
    sf.write(three, np.full((4410, 3), 0.1, dtype=np.float32), 44100, subtype="PCM_16")
    with pytest.raises(InputError, match="3 channels"):
        V.separate_vocals(three, model, "hallo", tmp_path / "w")
    with pytest.raises(ValueError, match="chain"):
        V.separate_vocals(silent, model, "echomimic", tmp_path / "w")


def test_silent_vocals_output_is_input_error(tmp_path: Path) -> None:
    model = V.MDXModel(_scale_model(tmp_path / "zero.onnx", scale=0.0), KIM)
    wav = tmp_path / "a.wav"
    sf.write(wav, _tones(0.5).T, 44100, subtype="PCM_16")
    for chain in ("hallo", "memo"):
        with pytest.raises(InputError, match="no vocals"):
            V.separate_vocals(wav, model, chain, tmp_path / "w")


# --- whole chains with an identity net ----------------------------------------------------------------


def _snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((x - ref).astype(np.float64) ** 2)))


def test_hallo_chain_identity_returns_input_resampled(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    sf.write(wav, _tones(1.5, stereo=False)[0], 44100, subtype="PCM_16")  # mono: duplicated to stereo
    model = V.MDXModel(_scale_model(tmp_path / "Kim_Vocal_2.onnx"), KIM)
    wav44 = V.separate_to_wav(wav, model, "hallo", tmp_path / "cache")
    assert wav44.name == "speech_(Vocals)_Kim_Vocal_2.wav"
    pcm, rate = sf.read(wav44, dtype="int16")
    assert rate == 44100 and pcm.shape == (int(1.5 * 44100), 2)
    np.testing.assert_array_equal(pcm[:, 0], pcm[:, 1])
    # Peak 0.5 (< 0.9) passes the caps; identity net -> x 1.009, truncated to int16.
    x44, _ = librosa.load(str(wav), sr=44100, mono=False)
    expected44 = (x44 * np.float32(KIM.compensate) * 32767).astype(np.int16)
    assert np.abs(pcm[:, 0].astype(np.int32) - expected44).max() <= 4  # STFT round trip < 1e-4

    y = V.separate_vocals(wav, model, "hallo", tmp_path / "cache")
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape[0] == int(1.5 * 16000)
    ref = librosa.load(str(wav), sr=16000)[0] * np.float32(KIM.compensate)
    # ffmpeg's swr resampler vs soxr: the tones agree to > 40 dB away from the file edges.
    assert _snr_db(y[400:-400], ref[400:-400]) > 40


def test_memo_chain_identity_amplifies_to_0_6(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    sf.write(wav, _tones(1.5).T, 44100, subtype="PCM_16")  # stereo, peak 0.5
    model = V.MDXModel(_scale_model(tmp_path / "Kim_Vocal_2.onnx"), KIM)
    y = V.separate_vocals(wav, model, "memo", tmp_path / "cache")
    assert (tmp_path / "cache" / "speech-16k.wav").is_file()  # MEMO's own 16 kHz copy of the input
    assert y.dtype == np.float32 and y.shape[0] == int(1.5 * 16000)
    ref = librosa.load(str(wav), sr=16000)[0]
    gain = float(np.dot(y, ref) / np.dot(ref, ref))
    # Input peak 0.5 raised to 0.6 (measured on the 44.1 kHz re-read of the 16 kHz copy), x 1.009;
    # the output peak 0.605 lies between 0.6 and 0.9, so no further change.
    assert gain == pytest.approx(0.6 / 0.5 * 1.009, rel=0.01)
    assert _snr_db(y[400:-400], gain * ref[400:-400]) > 35
