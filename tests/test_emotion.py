"""MEMO's emotion labels (talkfast.audio.emotion) against funasr's own API on a tiny random
emotion2vec folder, a literal re-computation of MEMO's loop, and hand-computed windows,
interpolation and clip modes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from talkfast.audio import emotion as E
from talkfast.errors import CheckpointError, InputError

SR = 16000

# emotion2vec's config.yaml layout (model: Emotion2vec, model_conf.modalities.audio) at tiny widths
TINY_CONF = {
    "loss_beta": 0.0, "loss_scale": None, "depth": 2, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "num_heads": 2, "norm_eps": 1e-5, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.05,
    "embed_dim": 16, "mlp_ratio": 2.0, "layer_norm_first": False, "average_top_k_layers": 2,
    "end_of_block_targets": False, "clone_batch": 8, "normalize": True,
    "modalities": {"audio": {
        "type": "AUDIO", "prenet_depth": 1, "prenet_layerdrop": 0.05, "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 3,
        "init_extra_token_zero": False, "mask_noise_std": 0.01, "mask_prob_min": None, "mask_prob": 0.5,
        "inverse_mask": False, "mask_prob_adjust": 0.05, "keep_masked_pct": 0.0, "mask_length": 5,
        "add_masks": False, "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True,
        "mask_channel_prob": 0.0, "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0,
        "use_alibi_encoder": True, "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None,
        "learned_alibi_scale": True, "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": 2, "model_depth": 2, "decoder": None, "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(8, 10, 5)] + [(8, 3, 2)] * 2 + [(8,2,2)]",
        "conv_pos_width": 9, "conv_pos_groups": 2, "conv_pos_depth": 2, "conv_pos_pre_ln": False}},
}
TOKENS = ["angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "<unk>"]


def _write_config(folder: Path, model_conf: dict, **extra) -> None:
    from omegaconf import OmegaConf

    conf = {"model": "Emotion2vec", "model_conf": model_conf, "tokenizer": "CharTokenizer",
            "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True}, **extra}
    OmegaConf.save(OmegaConf.create(conf), folder / "config.yaml")
    (folder / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "emotion-recognition", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.txt"}}}))
    (folder / "tokens.txt").write_text("\n".join(TOKENS) + "\n")


@pytest.fixture(scope="module")
def e2v_dir(tmp_path_factory) -> Path:
    """A tiny emotion2vec+ folder: funasr's Emotion2vec with a 9-way head (as emotion2vec_plus_*),
    random weights saved as {"model": state_dict} (plain tensors: weights_only-loadable)."""
    E._import_emotion2vec()
    from funasr.models.emotion2vec.model import Emotion2vec

    folder = tmp_path_factory.mktemp("emotion2vec")
    _write_config(folder, TINY_CONF)
    torch.manual_seed(0)
    model = Emotion2vec(model_conf=TINY_CONF, vocab_size=9)
    state = {k: (torch.randn_like(v) * 0.3 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"model": state}, folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def e2v(e2v_dir):
    return E.load_emotion2vec(e2v_dir)


def _wave(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    # a tone whose loudness and pitch change every second, plus noise: windows differ
    return (0.3 * torch.sin(2 * np.pi * (200 + 150 * torch.floor(t)) * t) * (1 + torch.floor(t) % 3)
            + 0.05 * torch.randn(n, generator=g)).float()


# ----------------------------------------------------------------------------- emotion2vec


def test_config_matches_funasr_download_model(e2v_dir):
    """Our parse of the folder gives what funasr's download_model hands MEMO's Emotion2vec(**kwargs)."""
    from funasr.download.download_model_from_hub import download_model

    kwargs = download_model(model=str(e2v_dir))
    conf, weights = E.read_emotion2vec_config(e2v_dir)
    assert Path(kwargs["init_param"]) == weights
    spec_ours = conf["modalities"]["audio"].pop("feature_encoder_spec")
    spec_theirs = kwargs["model_conf"]["modalities"]["audio"].pop("feature_encoder_spec")
    assert eval(spec_ours) == eval(spec_theirs) == [(8, 10, 5), (8, 3, 2), (8, 3, 2), (8, 2, 2)]  # noqa: S307 (test's own string)
    assert conf == kwargs["model_conf"]


def test_features_match_funasr_automodel(e2v_dir, e2v):
    """funasr's AutoModel(model=folder).generate(granularity="frame"/"utterance") vs our window
    feature (layer norm, extract_features, mean over frames): frames bit-identical, so the torch
    mean is identical; funasr's numpy utterance mean within 1e-6."""
    from funasr import AutoModel

    am = AutoModel(model=str(e2v_dir), device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR")
    for seconds, seed in ((2.0, 1), (3.0, 2), (1.3, 3)):
        wave = _wave(seconds, seed)
        frames = am.generate(input=wave, granularity="frame", extract_embedding=True)[0]["feats"]
        utt = am.generate(input=wave.numpy(), granularity="utterance", extract_embedding=True)[0]["feats"]
        ours = E.emotion2vec_features(e2v, wave)
        assert ours.shape == (1, 16)
        assert frames.shape[0] > 10
        torch.testing.assert_close(ours[0], torch.from_numpy(frames).mean(dim=0), rtol=0, atol=0)
        torch.testing.assert_close(ours[0], torch.from_numpy(utt), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- classifier


def _classifier_dir(root: Path, layers: int, channels: int, in_features: int = 1024, seed: int = 0,
                    scale: float = 1.0, config: dict | None = None) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(seed)
    dims = [in_features] + [channels] * (layers - 1) + [9]
    if layers == 1:
        state = {"layers.weight": torch.randn(9, in_features, generator=g), "layers.bias": torch.randn(9, generator=g)}
    else:
        state = {}
        for k in range(layers):
            state[f"layers.fc{k + 1}.weight"] = torch.randn(dims[k + 1], dims[k], generator=g) * scale / dims[k] ** 0.5
            state[f"layers.fc{k + 1}.bias"] = torch.randn(dims[k + 1], generator=g) * 0.1
    folder = root / "misc" / "audio_emotion_classifier"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "AudioEmotionClassifierModel", "_diffusers_version": "0.31.0",
           "num_classifier_layers": layers, "num_classifier_channels": channels} if config is None else config
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder, state


def _plain_classifier(state: dict, x: torch.Tensor) -> torch.Tensor:
    """MEMO's classifier written out: Linear/ReLU chain, softmax."""
    if "layers.weight" in state:
        return torch.softmax(x @ state["layers.weight"].T + state["layers.bias"], dim=-1)
    n = len(state) // 2
    for k in range(1, n + 1):
        x = x @ state[f"layers.fc{k}.weight"].T + state[f"layers.fc{k}.bias"]
        if k < n:
            x = torch.relu(x)
    return torch.softmax(x, dim=-1)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_classifier_matches_plain_recomputation(tmp_path, layers):
    _, state = _classifier_dir(tmp_path, layers, 6, seed=layers)
    clf = E.load_emotion_classifier(tmp_path)  # the MEMO root: finds misc/audio_emotion_classifier
    x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(clf(x), _plain_classifier(state, x), rtol=1e-6, atol=1e-7)
    assert set(clf.state_dict()) == set(state)


def test_classifier_defaults_and_subfolder(tmp_path):
    """config.json without the two fields -> MEMO's defaults (5 layers, 2048 channels); the
    classifier folder itself may be given."""
    folder, state = _classifier_dir(tmp_path, 5, 2048, config={"_class_name": "AudioEmotionClassifierModel"})
    clf = E.load_emotion_classifier(folder)
    assert clf.layers.fc1.weight.shape == (2048, 1024) and clf.layers.fc5.weight.shape == (9, 2048)


def test_classifier_errors(tmp_path, caplog):
    with pytest.raises(CheckpointError, match="audio_emotion_classifier"):
        E.load_emotion_classifier(tmp_path / "nowhere")
    folder, state = _classifier_dir(tmp_path / "a", 3, 4)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        E.load_emotion_classifier(tmp_path / "a")
    folder, state = _classifier_dir(tmp_path / "b", 3, 4)
    del state["layers.fc2.bias"]
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing keys: layers.fc2.bias"):
        E.load_emotion_classifier(tmp_path / "b")
    _classifier_dir(tmp_path / "c", 3, 4, config={"num_classifier_layers": 3, "num_classifier_channels": 5})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        E.load_emotion_classifier(tmp_path / "c")
    _classifier_dir(tmp_path / "d", 3, 4, config={"num_classifier_layers": "3; rm -rf /"})
    with pytest.raises(CheckpointError, match="num_classifier_layers must be a positive integer"):
        E.load_emotion_classifier(tmp_path / "d")
    folder, _ = _classifier_dir(tmp_path / "e", 3, 4)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot read"):
        E.load_emotion_classifier(tmp_path / "e")
    folder, state = _classifier_dir(tmp_path / "f", 3, 4)  # an extra key: reported, not fatal (diffusers)
    save_file({**state, "layers.fc9.weight": torch.zeros(2)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="talkfast.audio.emotion"):
        E.load_emotion_classifier(tmp_path / "f")
    assert "layers.fc9.weight" in caplog.text


# ----------------------------------------------------------------------------- windows, labels


def test_windows_hand_computed():
    W = E.EmotionWindow
    assert E.emotion_windows(4 * SR + 100) == [
        W(0, 32000, 0, 16000), W(0, 48000, 16000, 32000), W(16000, 64000, 32000, 48000),
        W(32000, 64100, 48000, 64000), W(32100, 64100, 48100, 64100)]
    assert E.emotion_windows(3 * SR + 5) == [  # the last middle window is cut at N, the end window overrides
        W(0, 32000, 0, 16000), W(0, 48000, 16000, 32000), W(16000, 48005, 32000, 48000), W(16005, 48005, 32005, 48005)]
    assert E.emotion_windows(2 * SR) == [W(0, 32000, 0, 16000), W(0, 32000, 16000, 32000)]
    assert E.emotion_windows(20000) == [W(0, 20000, 0, 16000), W(0, 20000, 4000, 20000)]
    assert E.emotion_windows(10000) == [W(0, 10000, 0, 10000), W(0, 10000, 0, 10000)]
    with pytest.raises(InputError):
        E.emotion_windows(0)


def test_sample_labels_follow_windows(monkeypatch):
    """Which samples each window reads and which labels it writes, with the classifier call
    replaced by a counter: later windows overwrite, every sample is labelled."""
    seen = []

    def fake(e2v, clf, window):
        seen.append((int(window[0]), int(window[-1]) + 1))
        return len(seen) - 1

    monkeypatch.setattr(E, "window_emotion", fake)
    n = 3 * SR + 5
    labels = E.sample_emotions(torch.arange(n, dtype=torch.float32), None, None)
    assert seen == [(0, 32000), (0, 48000), (16000, 48005), (16005, 48005)]
    expect = torch.cat([torch.full((16000,), 0), torch.full((16000,), 1), torch.full((5,), 2),
                        torch.full((16000,), 3)]).int()
    assert labels.dtype == torch.int32 and torch.equal(labels, expect)
    seen.clear()  # (C, N) input: the first channel only; int16 scaled as torchaudio does
    stereo = torch.stack([torch.arange(20000), -torch.arange(20000)]).to(torch.int16)
    monkeypatch.setattr(E, "window_emotion", lambda e, c, w: seen.append(float(w[-1])) or 4)
    assert torch.equal(E.sample_emotions(stereo, None, None), torch.full((20000,), 4, dtype=torch.int32))
    assert seen == [19999 / 32768] * 2


def test_nearest_interpolation_hand_computed():
    assert E.frame_emotions(torch.arange(10, dtype=torch.int32), 4).tolist() == [0, 2, 5, 7]  # floor(j * 2.5)
    assert E.frame_emotions(torch.tensor([0, 1, 2], dtype=torch.int32), 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    # 2 s labelled 3 then 6; 64 frames: frame j reads sample floor(j * 500)
    per_sample = torch.cat([torch.full((16000,), 3), torch.full((16000,), 6)]).int()
    assert E.frame_emotions(per_sample, 64).tolist() == [3] * 32 + [6] * 32
    with pytest.raises(InputError):
        E.frame_emotions(per_sample, 0)


def test_clip_mode_ties_to_smallest():
    frames = torch.tensor([4] * 8 + [2] * 8 + [3] * 9 + [1] * 7 + [7, 0] * 8, dtype=torch.int32)
    assert E.clip_modes(frames) == [2, 3, 0]
    assert E.clip_modes(frames, clip_frames=8) == [4, 2, 3, 1, 0, 0]
    with pytest.raises(InputError, match="do not split"):
        E.clip_modes(frames[:40])


def _memo_reference(wave: torch.Tensor, emotion_model, state: dict, audio_length: int) -> torch.Tensor:
    """MEMO a5aee30's extract_audio_emotion_labels loop written out (funasr model, plain classifier)."""
    labels = torch.full_like(wave, -1, dtype=torch.int32)

    def label(x):
        x = F.layer_norm(x, x.shape).view(1, -1)
        feats = emotion_model.extract_features(x)["x"].mean(dim=1)
        return torch.argmax(torch.softmax(_plain_classifier(state, feats), dim=-1), dim=-1).item()

    labels[:SR] = label(wave[: SR * 2])
    for i in range(SR, len(wave) - SR, SR):
        labels[i : i + SR] = label(wave[i - SR : i - SR + SR * 3])
    labels[-SR:] = label(wave[-SR * 2 :])
    return F.interpolate(labels[None, None].float(), size=audio_length, mode="nearest")[0, 0].int()


@torch.no_grad()
def test_clip_emotions_match_memo_loop(tmp_path, e2v_dir, e2v):
    """End to end on a 4.7 s wave (S' = 144 frames at 30 fps, 9 clips) against MEMO's loop run
    on funasr's AutoModel-loaded model: per-frame labels identical, several labels present."""
    from funasr import AutoModel

    wave = _wave(4.7, 7)
    # a 1-layer classifier centred on the windows' mean feature, so that the windows' labels differ
    feats = torch.cat([E.emotion2vec_features(e2v, wave[w.start : w.stop]) for w in E.emotion_windows(wave.numel())])
    folder, state = _classifier_dir(tmp_path, 1, 1, in_features=16, seed=5)
    state["layers.bias"] = -(state["layers.weight"] @ feats.mean(dim=0))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    clf = E.load_emotion_classifier(tmp_path, in_features=16)
    s_padded = 144  # ceil(4.7 * 30) = 141 -> 144
    reference = _memo_reference(wave, AutoModel(model=str(e2v_dir), device="cpu", disable_update=True,
                                                disable_pbar=True, log_level="ERROR").model, state, s_padded)
    labeller = E.EmotionLabeller(e2v, clf)
    frames = labeller.frame_labels(wave, s_padded)
    assert torch.equal(frames, reference)
    assert len(set(frames.tolist())) >= 2, "the stand-in should give more than one label"
    clips = E.clip_emotions(wave, s_padded, e2v, clf)
    assert clips == labeller.clip_labels(wave, s_padded)
    assert clips == [int(torch.mode(reference[16 * t : 16 * t + 16]).values) for t in range(9)]


# ----------------------------------------------------------------------------- emotion2vec errors


def _copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_emotion2vec_errors(tmp_path, e2v_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        E.load_emotion2vec(tmp_path / "nowhere")
    d = _copy_folder(e2v_dir, tmp_path / "no_weights")
    (d / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="model.pt is missing"):
        E.load_emotion2vec(d)
    d = _copy_folder(e2v_dir, tmp_path / "corrupt")
    (d / "model.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read emotion2vec weights"):
        E.load_emotion2vec(d)
    d = _copy_folder(e2v_dir, tmp_path / "pickle")  # a full pickle is refused, never run
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker)}, d / "model.pt")
    with pytest.raises(CheckpointError, match="plain tensors only"):
        E.load_emotion2vec(d)
    assert not marker.exists()
    d = _copy_folder(e2v_dir, tmp_path / "evil_spec")  # funasr eval()s this string; we refuse it first
    conf = json.loads(json.dumps(TINY_CONF))
    conf["modalities"]["audio"]["feature_encoder_spec"] = f"__import__('os').system('touch {marker}') or [(8,10,5)]"
    _write_config(d, conf)
    with pytest.raises(CheckpointError, match="feature_encoder_spec"):
        E.load_emotion2vec(d)
    assert not marker.exists()
    d = _copy_folder(e2v_dir, tmp_path / "remote_code")  # trust_remote_code is never acted on
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _write_config(d, TINY_CONF, trust_remote_code=True, remote_code=str(d / "evil.py"))
    E.load_emotion2vec(d)
    assert not marker.exists()
    d = _copy_folder(e2v_dir, tmp_path / "not_e2v")
    (d / "config.yaml").write_text("model: Paraformer\nmodel_conf: {}\n")
    with pytest.raises(CheckpointError, match="not an emotion2vec config"):
        E.load_emotion2vec(d)
    d = _copy_folder(e2v_dir, tmp_path / "keys")
    state = torch.load(d / "model.pt", weights_only=True)["model"]
    state.pop("blocks.1.mlp.fc2.bias")
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, d / "model.pt")  # prefixes are fine
    with pytest.raises(CheckpointError, match=r"1 missing keys: blocks.1.mlp.fc2.bias; 1 shape mismatches"):
        E.load_emotion2vec(d)


def test_wave_errors(e2v):
    clf = E.AudioEmotionClassifier(1, 4, in_features=16)
    with pytest.raises(InputError, match="empty"):
        E.sample_emotions(torch.zeros(0), e2v, clf)
    with pytest.raises(InputError, match="NaN"):
        E.sample_emotions(torch.full((100,), float("nan")), e2v, clf)
    with pytest.raises(InputError, match="shape"):
        E.sample_emotions(torch.zeros(1, 2, 100), e2v, clf)
    with pytest.raises(InputError, match=r"\(channels, N\)"):
        E.sample_emotions(np.zeros((32000, 2), np.float32), e2v, clf)
    with pytest.raises(InputError, match="too short"):
        E.sample_emotions(torch.randn(40), e2v, clf)
