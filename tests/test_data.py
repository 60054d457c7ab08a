"""Synthetic corpus: espeak-ng phoneme timing, visemes, renderer, corpus build/load, lip-sync metric."""

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from talkfast.data import speech
from talkfast.data.corpus import (
    build_corpus,
    decode_frames,
    encode_frames,
    load_corpus,
    read_manifest,
)
from talkfast.data.render import FaceRenderer, Identity
from talkfast.data.sentences import SENTENCES
from talkfast.data.visemes import mouth_target, viseme
from talkfast.errors import InputError, OutputError
from talkfast.eval.lipsync import lipsync_score, mouth_opening, pearson, score_series

needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng not installed")

BUILD = {"num_identities": 4, "sentences_per_identity": 3, "seed": 11, "size": 128, "test_fraction": 0.25, "workers": 1}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not speech.espeak_available():
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("corpus") / "c"
    build_corpus(out, **BUILD)
    return out


@pytest.fixture(scope="module")
def measured(corpus):
    samples = load_corpus(corpus, "all")
    return samples, [mouth_opening(s.frames(), s.face_boxes()) for s in samples]


# ---------------------------------------------------------------------------------------- speech
@needs_espeak
def test_phoneme_events_are_ordered_and_inside_the_audio():
    audio, events = speech.synthesize("Bring me the blue box by the window.", "en-us+f3", 170, 60, seed=1)
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    assert 1.0 < audio.duration < 5.0 and np.abs(audio.samples).max() > 0.05
    assert len(events) >= 20
    starts = [s for _, s, _ in events]
    assert all(b > a for a, b in itertools.pairwise(starts))
    for name, start, end in events:
        assert isinstance(name, str) and name and not name.startswith("_")
        assert 0.0 <= start < end <= audio.duration + 1e-6
    for (_, _, end), (_, start, _) in itertools.pairwise(events):
        assert end <= start + 1e-9
    names = [n for n, _, _ in events]
    assert names[0] == "b" and "m" in names and "u:" in names  # "bring me the blue"


@needs_espeak
def test_speech_is_deterministic_and_voices_differ():
    a1, e1 = speech.synthesize("Hello there.", "en+m3", 160, 40, seed=5)
    a2, e2 = speech.synthesize("Hello there.", "en+m3", 160, 40, seed=5)
    a3, _ = speech.synthesize("Hello there.", "en-us+f2", 160, 70, seed=5)
    assert np.array_equal(a1.samples, a2.samples) and e1 == e2
    assert not np.array_equal(a1.samples[: len(a3.samples)], a3.samples[: len(a1.samples)])


@needs_espeak
def test_speech_errors_are_input_errors(monkeypatch):
    with pytest.raises(InputError, match="unknown espeak-ng voice"):
        speech.synthesize("Hello.", "no-such-voice")
    with pytest.raises(InputError, match="rate"):
        speech.synthesize("Hello.", "en-us", rate=20)
    monkeypatch.setattr(speech, "_library_name", lambda: None)
    with pytest.raises(InputError, match="apt-get install espeak-ng"):
        speech.synthesize("Hello.", "en-us")


# ---------------------------------------------------------------------------------------- visemes
def test_visemes_closed_for_bilabials_open_for_open_vowels():
    for p in ("p", "b", "m"):
        assert viseme(p)[0][0] == 0.0
    for a in ("a", "A:", "aa"):
        assert viseme(a)[0][0] >= 0.9
    assert viseme("u:")[0][1] < 0.2 and viseme("i:")[0][1] > 0.7  # rounded vs spread
    assert viseme("_:") == ((0.0, 0.5),)
    assert len(viseme("aI")) == 2 and viseme("t#") == viseme("t") and viseme("@2") == viseme("@")


def test_mouth_target_follows_phonemes_and_closes_in_silence():
    phonemes = [("p", 0.5, 0.6), ("A:", 0.6, 0.9), ("m", 0.9, 1.0)]
    t = mouth_target(phonemes, 2.0)
    assert len(t) == 50 and t.openness.dtype == np.float32
    assert t.openness[:8].max() < 0.05 and t.openness[-15:].max() < 0.05  # silence -> closed
    assert t.openness[17:20].max() > 0.8  # the /A:/ at 0.6-0.9 s
    assert np.all(np.abs(np.diff(t.openness)) < 0.5)  # smooth
    assert len(mouth_target([], 1.0, num_frames=7)) == 7


# ---------------------------------------------------------------------------------------- renderer
def test_identities_vary_and_round_trip():
    ids = [Identity.sample(i) for i in range(30)]
    assert len({i.skin for i in ids}) == 30
    assert len({i.hair_style for i in ids}) >= 5 and len({i.background["kind"] for i in ids}) >= 4
    assert any(i.glasses for i in ids) and any(i.beard for i in ids)
    d = json.loads(json.dumps(ids[3].to_dict()))
    assert Identity.from_dict(d) == ids[3]


def test_render_background_static_and_boxes_follow_the_head():
    r = FaceRenderer(Identity.sample(7), 128)
    o = np.abs(np.sin(np.arange(60) / 4.0))
    res = r.render(o, np.full(60, 0.5), seed=3)
    assert res.frames.shape == (60, 128, 128, 3) and res.frames.dtype == np.uint8
    outside = ~res.masks.any(axis=0)
    assert outside.mean() > 0.4
    assert np.array_equal(res.frames[:, outside], np.broadcast_to(r.plate[outside], res.frames[:, outside].shape))
    assert (res.frames != res.frames[:1]).any(axis=(1, 2, 3)).sum() >= 50  # the head does move
    fb, mb = res.face_boxes, res.mouth_boxes
    assert np.all(fb[:, 0] < mb[:, 0]) and np.all(mb[:, 2] < fb[:, 2]) and np.all(mb[:, 3] < fb[:, 3])
    assert np.ptp(fb[:, 0]) > 0.3  # head motion moves the face box
    assert pearson(mb[:, 3] - mb[:, 1], o) > 0.95  # mouth box height follows the openness
    assert res.blink.max() > 0.5 or len(res.blink_starts) == 0


def test_measured_opening_tracks_the_rendered_opening():
    r = FaceRenderer(Identity.sample(21), 128)
    o = np.linspace(0, 1, 21)
    frames = np.stack([r.render_frame(v, 0.5)[0] for v in o])
    box = r.face_box()
    m = mouth_opening(frames, box)
    assert np.all(np.diff(m) > -0.01) and m[-1] - m[0] > 0.2
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames])
    assert pearson(mouth_opening(blurred, box), o) > 0.95


# ---------------------------------------------------------------------------------------- corpus
def test_frame_delta_codec_round_trips():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(decode_frames(encode_frames(f)), f)


@needs_espeak
def test_corpus_is_deterministic(corpus, tmp_path):
    again = tmp_path / "again"
    build_corpus(again, **BUILD)
    assert _digest(corpus) == _digest(again)
    other = tmp_path / "other"
    build_corpus(other, 1, 1, seed=12, size=128, workers=1)
    assert len(_digest(other)) == 5


@needs_espeak
def test_corpus_splits_are_disjoint(corpus):
    manifest = read_manifest(corpus)
    train, test = load_corpus(corpus, "train"), load_corpus(corpus, "test")
    assert len(train) == 9 and len(test) == 3 and len(load_corpus(corpus, "all")) == 12
    assert not {s.identity_id for s in train} & {s.identity_id for s in test}
    assert not {s.sentence_id for s in train} & {s.sentence_id for s in test}
    assert not set(manifest["sentence_split"]["train"]) & set(manifest["sentence_split"]["test"])
    assert all(s.split == "test" for s in test)
    assert len(SENTENCES) >= 60 and len(set(SENTENCES)) == len(SENTENCES)


@needs_espeak
def test_corpus_sample_contents(corpus):
    s = load_corpus(corpus, "test")[0]
    arrays = s.arrays()
    T = s.num_frames
    assert arrays["frames"].shape == (T, 128, 128, 3) and arrays["masks"].shape == (T, 128, 128)
    assert np.array_equal(arrays["frames"], s.frames()) and np.array_equal(arrays["masks"], s.masks())
    assert np.allclose(arrays["face_boxes"], s.face_boxes(), atol=1e-3)
    assert np.allclose(arrays["mouth_target"], s.mouth_target, atol=1e-4)
    audio = s.audio()
    assert audio.sample_rate == 16000 and audio.num_frames(25) == T
    assert s.reference().shape == (128, 128, 3)
    assert s.meta["text"] == SENTENCES[s.sentence_id] and s.meta["split"] == "test"
    assert s.identity().voice == s.meta["voice"]
    # static background across every frame of the sample
    outside = ~arrays["masks"].any(axis=0)
    assert np.all(arrays["frames"][:, outside] == arrays["frames"][:1, outside])


@needs_espeak
def test_build_refuses_to_clobber(corpus, tmp_path):
    with pytest.raises(OutputError, match="already holds a corpus"):
        build_corpus(corpus, 1, 1, seed=0)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        build_corpus(tmp_path, 1, 1, seed=0)
    with pytest.raises(InputError, match="too many"):
        build_corpus(tmp_path / "new", 2, 70, seed=0)


@needs_espeak
def test_cli_show(corpus, capsys):
    from talkfast.data import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    assert cli.run(parser.parse_args(["data", "show", str(corpus)])) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out and " 9 " in out
    assert cli.run(parser.parse_args(["data", "show", str(corpus / "train")])) == 2


# ---------------------------------------------------------------------------------------- lip-sync
@needs_espeak
def test_lipsync_ground_truth_vs_mismatched(measured):
    samples, opening = measured
    gt = [score_series(m, s.openness) for s, m in zip(samples, opening)]
    assert min(gt) >= 0.9
    n = len(samples)
    mism = [score_series(opening[i], samples[j].openness)
            for i in range(n) for j in range(n) if samples[i].sentence_id != samples[j].sentence_id]
    assert abs(float(np.mean(mism))) < 0.3 and float(np.median(np.abs(mism))) < 0.3
    s = samples[0]
    assert lipsync_score(s.frames(), s.face_boxes(), s.openness) == pytest.approx(gt[0])
    assert lipsync_score(s.frames(), s.mouth_boxes(), s.openness, kind="mouth") >= 0.9


@needs_espeak
def test_lipsync_frozen_mouth_and_constant_inputs(corpus):
    s = load_corpus(corpus, "train")[0]
    r = FaceRenderer(s.identity(), 128)
    T = s.num_frames
    frozen = r.render(np.full(T, 0.4), np.full(T, 0.5), seed=1)
    assert lipsync_score(frozen.frames, frozen.face_boxes, s.openness) == 0.0
    assert lipsync_score(s.frames(), s.face_boxes(), np.zeros(T)) == 0.0
    assert pearson([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert pearson([1.0], [2.0]) == 0.0
