"""The quality report: metrics on held-out corpus samples, controls, identity descriptor, outputs."""

import json
import shutil

import numpy as np
import pytest
import torch

from talkfast.app.cli import main
from talkfast.data.corpus import build_corpus, load_corpus
from talkfast.eval import quality

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("qcorpus") / "c"
    build_corpus(out, 6, 1, seed=5, size=64, test_fraction=0.34, workers=1)
    return out


def test_identity_descriptor_separates_identities(corpus):
    samples = load_corpus(corpus, "all")
    a, b = samples[0], next(s for s in samples if s.identity_id != samples[0].identity_id)
    frames = torch.from_numpy(a.frames()).permute(0, 3, 1, 2).float() / 255
    ref_a = torch.from_numpy(a.reference().copy()).permute(2, 0, 1).float() / 255
    ref_b = torch.from_numpy(b.reference().copy()).permute(2, 0, 1).float() / 255
    own = quality.identity_similarity(frames, a.face_boxes(), ref_a, a.face_boxes()[0])
    other = quality.identity_similarity(frames, a.face_boxes(), ref_b, b.face_boxes()[0])
    assert own.shape == (len(frames),)
    assert own.mean() > 0.8 and own.mean() > other.mean() + 0.2


def test_select_samples_spreads_over_identities():
    class S:
        def __init__(self, ident, k):
            self.identity_id, self.id = ident, f"{ident}-{k}"

    picked = quality.select_samples([S(i, k) for i in range(3) for k in range(2)], 4)
    assert [p.id for p in picked] == ["0-0", "1-0", "2-0", "0-1"]


def test_quality_command_writes_the_report(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    monkeypatch.chdir(tmp_path.parent)  # the model and the corpus lie under the working folder
    # tiny random weights through a model folder: the path a real checkpoint takes
    from talkfast.models.loading import build_random, save_embedded

    net, vae = build_random("tiny")
    model = save_embedded(net, vae, tmp_path / "model", {"corpus": {"identities": 6}})
    code = main(["quality", "--checkpoint", str(model), "--corpus", str(corpus), "--limit", "2", "--steps", "1",
                 "--out", str(out), "-q", "--motion-source", "pixels"])
    assert code == 0
    data = json.loads((out / "quality.json").read_text())
    assert data["summary"]["samples"] == 2 and data["settings"]["steps"] == 1
    assert data["settings"]["motion_source"] == "pixels"
    # no absolute machine paths in the report: the model and corpus folders relative to the working folder
    assert data["settings"]["weights"] == f"{tmp_path.name}/model"
    assert data["settings"]["corpus"] == f"{corpus.parent.name}/c"
    for s in data["samples"]:
        assert np.isfinite([s["psnr"], s["ssim"], s["lipsync"], s["identity_sim"]]).all()
        assert s["frames"] > 4 and s["clip_boundary"] > 0  # tiny: 4-frame clips, so every sample has boundaries
        assert 0.3 < s["clip_boundary_truth"] < 3  # rendered frames change about as much across as inside
        assert s["lipsync_truth"] > 0.8  # the metric itself works on ground-truth frames
        assert s["shuffled_audio_from"] not in (None, s["sample"])
    md = (out / "QUALITY.md").read_text()
    assert str(tmp_path.parent) not in md
    assert "lip-sync" in md and "contact_sheet.png" in md and "--motion-source pixels" in md and "clip boundaries" in md
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as im:
        assert im.width == 11 * 64 + 12 and im.height > 2 * 64


def test_quality_needs_two_samples(corpus, tmp_path, capsys):
    code = main(["quality", "--random-weights", "--corpus", str(corpus), "--limit", "1", "--out", str(tmp_path), "-q"])
    assert code != 0 and "at least 2" in capsys.readouterr().err
