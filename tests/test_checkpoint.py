"""The Hallo checkpoint path end to end, at toy size: a ``pretrained_models`` folder with
``hallo/net.pth``, ``sd-vae-ft-mse/`` and ``wav2vec/wav2vec2-base-960h/`` is found, loaded strictly
and generates a video with wav2vec2 features (the full-size layout itself is checked on the meta
device in test_models.py). The folder's SD VAE is a reduced-width AutoencoderKL (same block
types and 8x scale, loaded by the same ``from_pretrained`` call): a full-width one decodes at about
0.4 s per 64-pixel frame on one core and would make this the slowest test of the suite."""

from pathlib import Path

import pytest
import soundfile as sf
import torch
from diffusers import AutoencoderKL

import talkfast.models.loading as loading
from talkfast.errors import CheckpointError
from talkfast.io.video import probe_video
from talkfast.models.config import TINY
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
TOY_HALLO = TINY.replace(name="hallo", audio_features="wav2vec2", audio_layers=2, audio_feature_dim=32)


def write_hallo_folder(root: Path, cfg, monkeypatch):
    """A toy ``pretrained_models`` folder of the ``cfg`` model (loaded as 'hallo'); returns its net."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    monkeypatch.setattr(loading, "get_preset", lambda name: cfg)
    torch.manual_seed(0)
    net = loading.build_net(cfg).eval().requires_grad_(False)
    vae = AutoencoderKL(**loading.small_vae_config(cfg))
    (root / "hallo").mkdir(parents=True)
    torch.save(net.state_dict(), root / "hallo" / "net.pth")
    vae.save_pretrained(root / "sd-vae-ft-mse")
    w2v = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(w2v).save_pretrained(root / "wav2vec" / "wav2vec2-base-960h")
    return net


@pytest.fixture
def hallo_folder(tmp_path, monkeypatch):
    return tmp_path, write_hallo_folder(tmp_path, TOY_HALLO, monkeypatch)


def test_hallo_folder_loads_strictly_and_generates(hallo_folder, tmp_path):
    root, reference_net = hallo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    assert pipe.audio.kind == "wav2vec2_file" and pipe.identity == "zeros"
    for (k, v), (k2, w) in zip(pipe.net.state_dict().items(), reference_net.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, w)
    out = tmp_path / "out" / "talk.mp4"
    speech, rate = sf.read(ROOT / "src/talkfast/assets/examples/speech.wav", dtype="float32")
    short = tmp_path / "speech.wav"  # 0.5 s: 13 frames, several chained clips
    sf.write(short, speech[: rate // 2], rate)
    res = pipe.generate(ROOT / "src/talkfast/assets/examples/portrait.png", short, out, GenerateOptions(steps=2))
    assert res.frames == 13 and res.clips > 1
    info = probe_video(out)
    assert info.num_frames == res.frames and info.has_audio
    assert res.sidecar["options"]["hallo_context_tiling"] is True  # the released pairing for hallo


def test_hallo_folder_with_a_wrong_net_names_the_mismatch(hallo_folder):
    root, net = hallo_folder
    state = net.state_dict()
    state.pop("imageproj.norm.bias")
    torch.save(state, root / "hallo" / "net.pth")
    with pytest.raises(CheckpointError, match="imageproj.norm.bias"):
        load_pipeline(root, device="cpu", dtype="fp32")


def test_missing_vae_is_listed(hallo_folder):
    import shutil

    root, _ = hallo_folder
    shutil.rmtree(root / "sd-vae-ft-mse")
    with pytest.raises(CheckpointError, match="SD VAE"):
        load_pipeline(root, device="cpu", dtype="fp32")
