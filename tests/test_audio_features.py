"""Audio features: log-mel (no weights), Hallo-style wav2vec2 on a tiny random model, windowing."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkfast.audio.features import (
    MelFeatures,
    Wav2Vec2Features,
    build_audio_features,
    mel_filterbank,
    window_features,
)
from talkfast.errors import CheckpointError, InputError

SR = 16000


def _tone(seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


# ----------------------------------------------------------------------------------------- mel


def test_mel_shape_and_attributes():
    mel = MelFeatures()
    out = mel(_tone(3.0), 75)
    assert out.shape == (75, 1, 320) and out.dtype == torch.float32
    assert (mel.layers, mel.dim, mel.frames_per_video_frame) == (1, 320, 4)
    assert len(mel.state_dict()) == 0 and len(list(mel.parameters())) == 0
    assert torch.isfinite(out).all()


def test_mel_deterministic_and_input_types():
    mel = MelFeatures()
    wav = _noise(1.0)
    a = mel(wav, 25)
    torch.testing.assert_close(a, mel(wav, 25), rtol=0, atol=0)
    torch.testing.assert_close(a, mel(torch.from_numpy(wav), 25), rtol=0, atol=0)
    torch.testing.assert_close(a, mel(wav[None], 25), rtol=0, atol=0)
    torch.testing.assert_close(a, MelFeatures()(wav, 25), rtol=0, atol=0)


def test_mel_tone_differs_from_silence():
    mel = MelFeatures()
    tone, silence = mel(_tone(1.0), 25), mel(np.zeros(SR, np.float32), 25)
    floor = (math.log(1e-5) + 4.0) / 4.0
    torch.testing.assert_close(silence, torch.full_like(silence, floor))
    assert float((tone - silence).abs().mean()) > 0.1
    # The 440 Hz tone peaks in the mel bin whose triangle covers 440 Hz best.
    fb = mel_filterbank()
    expected_bin = int(np.argmax(fb[round(440 * 400 / SR)]))
    per_bin = tone[10, 0].reshape(4, 80).mean(0)
    assert int(per_bin.argmax()) == expected_bin


def test_mel_frames_are_aligned_to_video_frames():
    mel = MelFeatures()
    wav = np.zeros(2 * SR, np.float32)
    wav[10 * 640 : 11 * 640] = _noise(0.04, seed=1)  # a burst exactly in video frame 10
    out = mel(wav, 50)
    energy = out.mean(dim=(1, 2))
    assert int(energy.argmax()) == 10
    floor = (math.log(1e-5) + 4.0) / 4.0
    assert torch.allclose(energy[:9], torch.full((9,), floor)) and torch.allclose(energy[12:], torch.full((38,), floor))
    # Inside frame 10 all 4 mel frames see the burst.
    assert bool((out[10, 0].reshape(4, 80).mean(1) > floor + 0.5).all())


def test_mel_padding_and_trimming():
    mel = MelFeatures()
    wav = _noise(3.0)
    full = mel(wav, 75)
    # Fewer frames: the waveform is trimmed; all but the last frame (whose window reaches past the cut) agree.
    torch.testing.assert_close(mel(wav, 50)[:-1], full[:49])
    # A waveform that does not fill the last frame is zero-padded to a complete frame.
    short = mel(wav[: 74 * 640 + 100], 75)
    assert short.shape == (75, 1, 320)
    torch.testing.assert_close(short[:73], full[:73])
    # More frames than audio: silence at the end.
    longer = mel(wav, 80)
    torch.testing.assert_close(longer[-2:], torch.full_like(longer[-2:], (math.log(1e-5) + 4.0) / 4.0))


def test_mel_width_does_not_depend_on_fps():
    # The model's AudioProj input width is fixed, so every frame rate gives k=4 steps x 80 mels.
    mel = MelFeatures(fps=30)
    assert mel.frames_per_video_frame == 4 and mel.dim == 320
    assert mel(_tone(2.0), 60).shape == (60, 1, 320)
    mel24 = MelFeatures(fps=24)
    assert mel24(_tone(1.0), 24).shape == (24, 1, 320)
    # A tone and silence still differ at 30 fps, frame by frame.
    silent = mel(np.zeros(32000, np.float32), 60)
    assert (mel(_tone(2.0), 60) - silent).abs().amax(dim=(1, 2)).min() > 0.1


def test_mel_filterbank_matches_reference_implementation():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.mel_filter_bank(201, 80, 0.0, 8000.0, SR, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filterbank(), ref, atol=1e-7, rtol=0)
    ref_htk = audio_utils.mel_filter_bank(201, 80, 0.0, 8000.0, SR, norm=None, mel_scale="htk")
    np.testing.assert_allclose(mel_filterbank(htk=True, norm=None), ref_htk, atol=1e-6, rtol=0)


def test_mel_input_errors():
    mel = MelFeatures()
    with pytest.raises(InputError):
        mel(np.zeros((2, SR), np.float32), 25)  # stereo
    with pytest.raises(InputError):
        mel(np.zeros(SR, np.float32), 0)
    with pytest.raises(InputError):
        mel(np.full(SR, np.nan, np.float32), 25)
    with pytest.raises(InputError):
        mel([0.0, 1.0], 1)


# ------------------------------------------------------------------------------------- windows


def test_window_features_clamps_at_the_edges():
    feats = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1)
    out = window_features(feats, radius=2)
    assert out.shape == (5, 5, 1, 1)
    expected = torch.tensor(
        [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4], [2, 3, 4, 4, 4]],
        dtype=torch.float32,
    ).reshape(5, 5, 1, 1)
    torch.testing.assert_close(out, expected)
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    out = window_features(feats, radius=1)
    assert out.shape == (2, 3, 3, 4)
    torch.testing.assert_close(out[0], torch.stack([feats[0], feats[0], feats[1]]))
    torch.testing.assert_close(out[1], torch.stack([feats[0], feats[1], feats[1]]))
    torch.testing.assert_close(window_features(feats, radius=0)[:, 0], feats)


# ------------------------------------------------------------------------------------ wav2vec2


@pytest.fixture(scope="module")
def tiny_wav2vec2_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    path = tmp_path_factory.mktemp("tiny_wav2vec2")
    Wav2Vec2Model(config).save_pretrained(path)
    return path


def _hallo_reference(model, wav: np.ndarray, s: int) -> torch.Tensor:
    """Hallo's patched forward written out: normalise, CNN, interpolate, projection, encoder."""
    x = torch.from_numpy((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)).float()[None]
    cnn = model.feature_extractor(x)
    cnn = F.interpolate(cnn, size=s, mode="linear", align_corners=True).transpose(1, 2)
    proj = model.feature_projection(cnn)
    proj = proj[0] if isinstance(proj, tuple) else proj
    return model.encoder(proj).last_hidden_state[0]


def test_wav2vec2_features_shape_and_flow(tiny_wav2vec2_dir):
    feats = Wav2Vec2Features(tiny_wav2vec2_dir)
    assert (feats.layers, feats.dim) == (2, 32)
    wav = _noise(1.6)
    out = feats(wav, 40)
    assert out.shape == (40, 2, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, feats(torch.from_numpy(wav), 40), rtol=0, atol=0)
    # Without Hallo's clip padding the last layer equals the spelled-out Hallo flow.
    plain = Wav2Vec2Features(tiny_wav2vec2_dir, clip_length=0)
    got = plain(wav, 40)
    with torch.no_grad():
        ref = _hallo_reference(plain.model, wav, 40)
    torch.testing.assert_close(got[:, -1], ref, atol=1e-4, rtol=1e-4)
    # With a multiple of clip_length nothing is padded, so both agree.
    wav48 = _noise(48 / 25, seed=3)
    torch.testing.assert_close(feats(wav48, 48), plain(wav48, 48), atol=1e-5, rtol=1e-5)


def test_wav2vec2_hidden_states_match_the_model(tiny_wav2vec2_dir):
    # When S equals the CNN frame count the interpolation is the identity, so our per-layer
    # outputs must equal the unpatched model's hidden_states[1:].
    feats = Wav2Vec2Features(tiny_wav2vec2_dir, clip_length=0)
    wav = _noise(0.2, seed=2)
    t = int(feats.model._get_feat_extract_output_lengths(torch.tensor(wav.shape[0])))
    feats.fps = SR * t / wav.shape[0]  # one "video frame" per CNN frame
    got = feats(wav, t)
    x = torch.from_numpy((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)).float()[None]
    with torch.no_grad():
        ref = feats.model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got, torch.stack(ref[1:], dim=2)[0], atol=1e-5, rtol=1e-5)


def test_wav2vec2_uses_preprocessor_config_and_stays_in_eval(tiny_wav2vec2_dir, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    Wav2Vec2Model.from_pretrained(tiny_wav2vec2_dir).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True).save_pretrained(tmp_path)
    with_fe = Wav2Vec2Features(tmp_path)
    assert with_fe.feature_extractor is not None
    without = Wav2Vec2Features(tiny_wav2vec2_dir)
    assert without.feature_extractor is None
    wav = _noise(0.64, seed=4)
    torch.testing.assert_close(with_fe(wav, 16), without(wav, 16), atol=1e-4, rtol=1e-4)
    without.train()
    assert not without.model.training
    torch.testing.assert_close(without(wav, 16), with_fe(wav, 16), atol=1e-4, rtol=1e-4)
    assert all(not p.requires_grad for p in without.parameters())


def test_wav2vec2_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Wav2Vec2Features(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json") as info:
        Wav2Vec2Features(empty)
    assert "model weights" in str(info.value)


def test_build_audio_features(tiny_wav2vec2_dir):
    mel = build_audio_features("mel")
    assert isinstance(mel, MelFeatures) and mel.dim == 320
    assert build_audio_features("mel", fps=30).fps == 30.0
    w2v = build_audio_features("wav2vec2", model_dir=tiny_wav2vec2_dir)
    assert isinstance(w2v, Wav2Vec2Features)
    with pytest.raises(CheckpointError):
        build_audio_features("wav2vec2")
    with pytest.raises(InputError):
        build_audio_features("whisper")
