"""Whole-file wav2vec2 features (Hallo / MEMO), checked against the originals' steps written out
with transformers' own Wav2Vec2FeatureExtractor and Wav2Vec2Model pieces on a tiny random model."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkfast.audio.wav2vec_file import FAMILIES, Wav2Vec2FileFeatures, file_frame_counts
from talkfast.errors import CheckpointError, InputError
from talkfast.io.audio import Audio
from talkfast.pipeline.conditioning import AudioConditioner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _save_tiny(path, **overrides):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**{**TINY, **overrides})).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True,
                             return_attention_mask=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny_wav2vec2_file"))


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts and gliding tones with pauses, a little like speech, with a DC offset."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    env = (np.sin(2 * np.pi * 3.1 * t) > -0.2) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.37 * t + 1.0))
    tone = np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.8 * t)) * t)
    return (0.05 + 0.3 * env * (tone + 0.3 * rng.standard_normal(n))).astype(np.float32)


def _original(model_dir, wav: np.ndarray, fps: int, clip_length: int = 16):
    """Hallo's AudioProcessor.preprocess + Wav2VecModel.forward + process_audio_emb (MEMO's
    preprocess_audio is the same), step by step: returns the (S', 5, L, D) windows and S."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    fe = Wav2Vec2FeatureExtractor.from_pretrained(model_dir)
    model = Wav2Vec2Model.from_pretrained(model_dir).eval()
    audio_feature = np.squeeze(fe(wav, sampling_rate=SR).input_values)
    seq_len = math.ceil(len(audio_feature) / SR * fps)
    audio_length = seq_len
    x = torch.from_numpy(audio_feature).float()
    if clip_length > 0 and seq_len % clip_length != 0:
        x = F.pad(x, (0, (clip_length - seq_len % clip_length) * (SR // fps)), "constant", 0.0)
        seq_len += clip_length - seq_len % clip_length
    layer_outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: layer_outputs.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.encoder.layers]
    with torch.no_grad():
        feats = model.feature_extractor(x[None]).transpose(1, 2)
        feats = F.interpolate(feats.transpose(1, 2), size=seq_len, align_corners=True, mode="linear").transpose(1, 2)
        hidden, _ = model.feature_projection(feats)
        model.encoder(hidden)
    for h in hooks:
        h.remove()
    emb = torch.stack(layer_outputs, dim=1)[0].transpose(0, 1)  # hidden_states[1:] -> (S', L, D)
    windows = torch.stack([torch.stack([emb[max(min(i + j, emb.shape[0] - 1), 0)] for j in range(-2, 3)])
                           for i in range(emb.shape[0])])
    return windows, audio_length


# --------------------------------------------------------------------------------- frame counts


def test_frame_counts_and_padding_per_family():
    n = int(1.3 * SR)  # 20800 samples
    assert file_frame_counts(n, 25) == (33, 48, 15 * 640)  # Hallo: 640 samples a frame
    assert file_frame_counts(n, 30) == (39, 48, 9 * 533)  # MEMO: 16000 // 30 = 533
    assert file_frame_counts(20480, 25) == (32, 32, 0)  # a multiple of 16: no padding
    assert file_frame_counts(n, 25, clip_length=0) == (33, 33, 0)
    # the originals' float expression: 4480 / 16000 * 25 = 7.000000000000001 -> 8 frames, not 7
    assert file_frame_counts(4480, 25)[0] == 8 and math.ceil(4480 * 25 / SR) == 7
    assert (FAMILIES["hallo"].fps, FAMILIES["hallo"].returns_padded) == (25.0, False)
    assert (FAMILIES["memo"].fps, FAMILIES["memo"].returns_padded) == (30.0, True)
    with pytest.raises(InputError):
        file_frame_counts(0, 25)


# ---------------------------------------------------------------------- whole file vs original


@pytest.mark.parametrize("family", ["hallo", "memo"])
def test_whole_file_matches_the_original_steps(tiny_dir, family):
    fps = int(FAMILIES[family].fps)
    wav = _speechy(1.3, seed=1)
    ref, s_ref = _original(tiny_dir, wav, fps)
    cond = AudioConditioner("wav2vec2_file", model_dir=tiny_dir, fps=fps, family=family)
    audio = Audio(wav, SR, SR, 1)
    feats = cond.file_features(audio)
    assert not feats.windowed and (feats.frames, feats.padded_frames) == (s_ref, 48)
    # Hallo returns the unpadded S (the video is cut to it), MEMO the padded S'
    assert cond.num_frames(audio) == (48 if family == "memo" else s_ref)
    assert cond.padded_frames(audio) == 48
    got = torch.cat([cond.clip(audio, c * 16, 16) for c in range(3)])
    assert got.shape == (48, 5, 2, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.full(), ref[:, 2], atol=1e-5, rtol=1e-5)


def test_clip_slicing_reads_padded_features_at_the_end(tiny_dir):
    wav = _speechy(1.3, seed=2)
    ref, s = _original(tiny_dir, wav, 25)
    cond = AudioConditioner("wav2vec2_file", model_dir=tiny_dir, fps=25, family="hallo")
    audio = Audio(wav, SR, SR, 1)
    last = cond.clip(audio, 32, 16)  # the last clip: frames 33..47 are past the audio (S = 33)
    torch.testing.assert_close(last, ref[32:48], atol=1e-5, rtol=1e-5)
    # its context clamps at S' - 1 = 47, not at S - 1 = 32
    torch.testing.assert_close(last[-1, 3], last[-1, 2], atol=0, rtol=0)
    torch.testing.assert_close(last[-2, 4], last[-1, 2], atol=0, rtol=0)
    assert float((last[5, 2] - last[0, 2]).abs().max()) > 1e-3  # padded frames are not a copy of frame S-1
    # a clip across the middle and one starting at 0 (clamped at 0)
    torch.testing.assert_close(cond.clip(audio, 10, 7), ref[10:17], atol=1e-5, rtol=1e-5)
    first = cond.clip(audio, 0, 3)
    torch.testing.assert_close(first[0, 0], first[0, 2], atol=0, rtol=0)
    # computed once per Audio object and fps; another object (same samples) is computed anew
    assert cond.file_features(audio) is cond.file_features(audio, 25)
    other = Audio(wav.copy(), SR, SR, 1)
    assert cond.file_features(other) is not cond.file_features(audio)


# -------------------------------------------------------------------------------------- windows


def test_windowed_single_window_equals_whole(tiny_dir, tmp_path):
    """One window over the whole file keeps the grid, the normalisation and the first conv's
    GroupNorm statistics of the whole file: the same features up to round-off."""
    wav = _speechy(3.7, seed=3)
    ext = Wav2Vec2FileFeatures(tiny_dir, window_frames=400, overlap_frames=100)
    for fps in (25, 30):
        whole = ext.prepare(wav, fps).full()
        win = ext.prepare(wav, fps, windowed=True)
        assert win.windowed
        torch.testing.assert_close(win.full(), whole, atol=2e-5, rtol=2e-5)
    # a CNN with per-frame LayerNorm (no global statistics) as well
    layer_dir = _save_tiny(tmp_path / "layer", feat_extract_norm="layer")
    ext = Wav2Vec2FileFeatures(layer_dir, window_frames=400, overlap_frames=100)
    torch.testing.assert_close(ext.prepare(wav, 25, windowed=True).full(), ext.prepare(wav, 25).full(),
                               atol=2e-5, rtol=2e-5)


def test_windowed_long_input_within_bound(tiny_dir):
    wav = _speechy(40.0, seed=4)  # S' = 1008 frames at 25 fps
    ext = Wav2Vec2FileFeatures(tiny_dir, window_frames=240, overlap_frames=60, max_whole_frames=2000)
    whole = ext.prepare(wav, 25).full()
    ext.max_whole_frames = 500  # now the same file is windowed automatically
    win = ext.prepare(wav, 25)
    assert win.windowed and win.padded_frames == 1008
    # slices across core boundaries (core = 120 frames) equal the same slice of all frames
    every = win.full()
    torch.testing.assert_close(win.rows(110, 250), every[110:250], atol=0, rtol=0)
    torch.testing.assert_close(win.window(1000, 8), every[torch.arange(998, 1010).clamp_max(1007)].unfold(0, 5, 1)
                               .permute(0, 3, 1, 2), atol=0, rtol=0)
    rel = (every - whole).norm(dim=-1) / whole.norm(dim=-1)  # per frame and layer
    # measured 0.20% max, 0.086% mean (torch 2.13 CPU); the bound leaves room for other kernels
    assert float(rel.max()) < 0.01, float(rel.max())
    assert float(rel.mean()) < 0.003, float(rel.mean())
    # treating each window as its own file (own grid and statistics) is much further off
    own = torch.cat([Wav2Vec2FileFeatures(tiny_dir).prepare(wav[a * 640 : (a + 240) * 640], 25, 0).full()[:240]
                     for a in range(0, 960, 240)])
    rel_own = (own - whole[:960]).norm(dim=-1) / whole[:960].norm(dim=-1)
    assert float(rel_own.mean()) > 5 * float(rel[:960].mean())


# --------------------------------------------------------------------------------------- errors


def test_errors_for_bad_folders_and_inputs(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Wav2Vec2FileFeatures(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json") as info:
        AudioConditioner("wav2vec2_file", model_dir=empty)
    assert "model weights" in str(info.value)
    with pytest.raises(CheckpointError, match="model directory"):
        AudioConditioner("wav2vec2_file")
    with pytest.raises(InputError, match="family"):
        AudioConditioner("wav2vec2_file", model_dir=tiny_dir, family="echomimic")
    ext = Wav2Vec2FileFeatures(tiny_dir)
    with pytest.raises(InputError):
        ext.prepare(np.zeros(0, np.float32), 25)
    with pytest.raises(InputError):
        ext.prepare(np.full(1000, np.nan, np.float32), 25)
    with pytest.raises(ValueError, match="wav2vec2_file"):
        AudioConditioner("mel", window_frames=10)
