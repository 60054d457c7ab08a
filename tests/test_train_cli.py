"""The whole embedded-model recipe at toy size through the CLI: corpus -> autoencoder -> network
-> exported model folder -> a video generated from it."""

import json
import shutil

import pytest

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
                 "--steps", "3", "--run-steps", "2", "--device", "cpu"]) == 0
    assert main(["train", "net", "--data", str(corpus), "--out", str(run), "--model", "tiny",
                 "--steps", "3", "--device", "cpu"]) == 0  # resumes at step 2
    assert json.loads((run / "net_train.json").read_text())["steps"] == 3
    assert main(["train", "export", "--out", str(run), "--model", "tiny"]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["preset"] == "tiny" and card["trained_steps"] == 3
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
