"""The shipped embedded model: present, within the size budget, documented, and it makes a face.

This is the CI check that generation from the shipped weights works (the training recipe itself is
exercised at toy size in test_train_cli.py)."""

import json

import numpy as np
import pytest
import torch

from talkfast import examples
from talkfast.eval import metrics
from talkfast.io.audio import Audio, load_audio
from talkfast.io.image import load_image
from talkfast.models.loading import EMBEDDED_DIR
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

MAX_BYTES = 50 * 1024 * 1024


def test_weights_are_shipped_within_budget_with_a_card():
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file()]
    assert (EMBEDDED_DIR / "model.json").is_file() and (EMBEDDED_DIR / "net.safetensors").is_file()
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    card = json.loads((EMBEDDED_DIR / "model.json").read_text())
    assert card["preset"] == "small" and card["trained_steps"] >= 1000
    assert card["final_loss"] < 0.5 * card["first_loss"]
    assert {"identities", "sentences", "seed", "size"} <= set(card["corpus"])
    assert (EMBEDDED_DIR / "MODEL_CARD.md").is_file()


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return load_pipeline(device="cpu")


def one_clip(pipe, audio_path, seconds=0.64):
    audio = load_audio(audio_path)
    n = int(seconds * audio.sample_rate)
    clip = Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels)
    frames = []
    pipe.generate(load_image(examples.PORTRAIT), clip, None, GenerateOptions(steps=6, seed=1),
                  on_clip=lambda f: frames.append(f.float()))
    return torch.cat(frames)


def test_shipped_weights_generate_the_portraits_face(pipe):
    """A trained model reproduces the portrait it is given: 22 dB against it when shipped, random
    weights ~12 dB."""
    video = one_clip(pipe, examples.SPEECH)
    portrait = torch.from_numpy(np.array(load_image(examples.PORTRAIT).convert("RGB").resize((128, 128)))).float()
    portrait = portrait.permute(2, 0, 1)[None] / 255
    assert video.shape[1:] == (3, 128, 128)
    assert metrics.psnr(video, portrait.expand_as(video)) > 18.0
    assert float(video.std(dim=0).mean()) > 1e-3  # it moves
