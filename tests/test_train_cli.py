"""The whole embedded-model recipe at toy size through the CLI: corpus -> autoencoder -> network
-> exported model folder -> a video generated from it."""

import json
import shutil

import pytest
import torch

from talkfast.app.cli import main
from talkfast.io.video import probe_video

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_corpus_train_export_generate(tmp_path, capsys):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    assert main(["data", "build", "--out", str(corpus), "--identities", "3", "--sentences", "2",
                 "--size", "64", "--seed", "1", "-q"]) == 0
    assert main(["train", "vae", "--data", str(corpus), "--out", str(run), "--model", "tiny",
                 "--steps", "2", "--batch", "2", "--device", "cpu"]) == 0
    assert main(["train", "net", "--data", str(corpus), "--out", str(run), "--model", "tiny",
                 "--steps", "3", "--run-steps", "2", "--device", "cpu", "--motion-noise", "0.2"]) == 0
    assert main(["train", "net", "--data", str(corpus), "--out", str(run), "--model", "tiny",
                 "--steps", "3", "--device", "cpu", "--motion-noise", "0.2"]) == 0  # resumes at step 2
    net_train = json.loads((run / "net_train.json").read_text())
    assert net_train["steps"] == 3 and net_train["config"]["motion_noise"] == 0.2
    assert main(["train", "export", "--out", str(run), "--model", "tiny", "--data", str(corpus), "--half",
                 "--motion-source", "reference"]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["preset"] == "tiny" and card["trained_steps"] == 3 and card["weights_dtype"] == "float16"
    assert card["motion_source"] == "reference"
    assert card["corpus"]["identities"] == 3 and card["net_training"]["steps"] == 3
    model_card = (run / "model" / "MODEL_CARD.md").read_text()
    assert "--identities 3" in model_card and "| network (`net.safetensors`)" in model_card
    # the latent scale measured after VAE training travels into the exported VAE config
    factor = torch.load(run / "vae_ckpt.pt", weights_only=True)["scaling_factor"]
    assert factor > 0 and factor != 1.0
    assert json.loads((run / "model" / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(factor)
    out = tmp_path / "talk.mp4"
    sample = next((corpus).glob("**/reference.png"))
    assert main(["generate", "--checkpoint", str(run / "model"), "-s", str(sample),
                 "-a", str(sample.parent / "audio.wav"), "-o", str(out), "--steps", "2", "-q"]) == 0
    info = probe_video(out)
    assert info.width == 64 and info.num_frames > 0 and info.has_audio


def test_train_net_without_vae_says_what_to_do(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    assert main(["data", "build", "--out", str(corpus), "--identities", "2", "--sentences", "1",
                 "--size", "64", "-q"]) == 0
    code = main(["train", "net", "--data", str(corpus), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--steps", "1", "--device", "cpu"])
    assert code == 4 and "train vae" in capsys.readouterr().err


def test_cached_latents_and_crops_match_the_pixels(tmp_path):
    """A data source with an encoder hands out latents equal to encoding its pixel clip; crops are
    windows of real frames; a shorter --clip-frames is honoured."""
    import dataclasses

    import torch

    from talkfast.data.corpus import build_corpus
    from talkfast.models.config import get_preset
    from talkfast.models.loading import build_random
    from talkfast.train.data import CorpusClips
    from talkfast.train.objective import encode_latents

    corpus = tmp_path / "corpus"
    build_corpus(corpus, 2, 1, seed=3, size=64, workers=1)
    cfg = dataclasses.replace(get_preset("tiny"), clip_frames=3)
    _, vae = build_random(cfg)
    plain = CorpusClips(corpus, cfg, first_clip_prob=0.5)
    cached = CorpusClips(corpus, cfg, first_clip_prob=0.5, clip_frames=5, encoder=lambda x: encode_latents(vae, x))
    for seed in range(6):
        ex = cached.example(torch.Generator().manual_seed(seed))
        assert ex.frames.shape[0] == 5 and ex.audio.shape[0] == 5 and ex.motion.shape[0] == cfg.motion_frames
        pixels = torch.cat([ex.reference[None], ex.motion, ex.frames])
        torch.testing.assert_close(ex.latents, encode_latents(vae, pixels), rtol=1e-4, atol=1e-4)
        ref = plain.example(torch.Generator().manual_seed(seed))  # same draw without the cache
        assert ref.latents is None and ref.frames.shape[0] == 3
    whole = plain.frame_batch(torch.Generator().manual_seed(0), 3)
    crops = plain.frame_batch(torch.Generator().manual_seed(0), 3, crop=32)
    assert whole.shape == (3, 3, 64, 64) and crops.shape == (3, 3, 32, 32)
    frames = torch.cat([plain.prepared(i).frames for i in range(len(plain.samples))]).float() / 127.5 - 1
    windows = frames.unfold(2, 32, 1).unfold(3, 32, 1)  # (N, 3, 33, 33, 32, 32)
    for crop in crops:
        diff = (windows - crop[None, :, None, None]).abs().amax(dim=(1, 4, 5))
        assert float(diff.min()) < 1e-6  # every crop is a window of some corpus frame


def test_train_cli_rejects_bad_sizes(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    assert main(["data", "build", "--out", str(corpus), "--identities", "2", "--sentences", "1",
                 "--size", "64", "-q"]) == 0
    assert main(["train", "vae", "--data", str(corpus), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--steps", "1", "--crop", "30", "--device", "cpu"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["train", "net", "--data", str(corpus), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--steps", "1", "--motion-noise", "-0.1", "--device", "cpu"]) == 2
    assert "--motion-noise must be >= 0" in capsys.readouterr().err
