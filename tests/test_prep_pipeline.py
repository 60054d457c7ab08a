"""The originals' input preparation inside ``generate``: a toy Hallo folder holding the
preparation models (the real MediaPipe landmarker where the install fetched it, stand-in
insightface and MDX-Net models built here) runs every original step, and what reaches the network
equals each step run on its own; without them each step falls back, said in a warning and in the
sidecar; ``--prep`` overrides reach the loader."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from test_checkpoint import TOY_HALLO, hallo_folder, write_hallo_folder  # noqa: F401  (fixture)
from test_emotion import e2v_dir  # noqa: F401  (fixture)
from test_face_identity import LARGE, SMALL, make_detector, make_recognizer
from test_vocals import KIM, _scale_model

import talkfast.audio.vocals as V
from talkfast.app.cli import main
from talkfast.errors import InputError
from talkfast.face.hallo_prep import hallo_face_boxes, hallo_face_prep
from talkfast.face.identity import FaceIdentity
from talkfast.face.landmarker import FaceLandmarker
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / ".cache" / "test-models" / "face_landmarker.task"
MODELS = "face_analysis/models"


def _speech(tmp_path: Path, seconds: float = 0.5) -> Path:
    speech, rate = sf.read(ROOT / "src/talkfast/assets/examples/speech.wav", dtype="float32")
    path = tmp_path / "speech.wav"
    sf.write(path, speech[: int(rate * seconds)], rate)
    return path


@pytest.fixture
def astronaut(tmp_path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).resize((256, 256), Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture
def full_folder(tmp_path, monkeypatch):
    if not TASK.is_file():
        pytest.skip("the test face landmarker was not fetched (scripts/install.sh)")
    root = tmp_path / "pretrained_models"
    write_hallo_folder(root, TOY_HALLO.replace(image_embed_dim=512), monkeypatch)  # insightface's 512-d embedding
    models = root / MODELS
    models.mkdir(parents=True)
    shutil.copy(TASK, models / "face_landmarker_v2_with_blendshapes.task")
    make_detector(models / "scrfd_10g_bnkps.onnx", [SMALL, LARGE])
    make_recognizer(models / "glintr100.onnx")
    (root / "audio_separator").mkdir()
    kim = _scale_model(root / "audio_separator" / "Kim_Vocal_2.onnx")
    monkeypatch.setitem(V.MDX_MODEL_DATA, V.model_hash(kim), KIM)  # the stand-in answers to Kim_Vocal_2's parameters
    return root


def test_hallo_folder_runs_every_original_step_and_the_network_gets_their_outputs(full_folder, astronaut, tmp_path):
    pipe = load_pipeline(full_folder, device="cpu", dtype="fp32")
    image = Image.open(astronaut).convert("RGB")
    por = pipe.portrait(image, 64, name=str(astronaut))
    # what each step gives on its own, run here through its room
    boxes = hallo_face_boxes(image, FaceLandmarker(full_folder / MODELS / "face_landmarker_v2_with_blendshapes.task"),
                             path=astronaut)
    assert boxes.method == "mediapipe:face_landmarker"
    face = hallo_face_prep(image, boxes, 64)
    assert torch.equal(por.pixels, face.pixels) and torch.equal(por.locator_input, face.locator_input)
    for got, want in zip(por.masks.face + por.masks.lip + por.masks.full, face.masks.face + face.masks.lip + face.masks.full):
        assert torch.equal(got, want)
    emb, info = FaceIdentity(full_folder / MODELS).embed(image)
    assert info.face_found and torch.equal(por.identity, emb) and emb.abs().sum() > 0
    speech = _speech(tmp_path)
    res = pipe.generate(astronaut, speech, tmp_path / "out.mp4", GenerateOptions(steps=1), size=64)
    prep = res.sidecar["preparation"]
    assert prep["landmarks"]["ran"] == "original" and prep["landmarks"]["method"] == "mediapipe:face_landmarker"
    assert prep["identity"]["ran"] == "original" and prep["identity"]["face_found"] is True
    assert prep["vocals"] == {"ran": "original", "model": str(full_folder / "audio_separator" / "Kim_Vocal_2.onnx")}
    assert res.sidecar["options"]["seed"] == 42  # Hallo's default seed


def test_hallo_speech_is_the_separated_vocals(full_folder, tmp_path):
    pipe = load_pipeline(full_folder, device="cpu", dtype="fp32")
    path = _speech(tmp_path)
    from talkfast.io.audio import load_audio

    speech, labels, record = pipe.prepare_speech(load_audio(path), 25)
    want = V.separate_vocals(path, full_folder / "audio_separator" / "Kim_Vocal_2.onnx", "hallo", tmp_path / "w")
    assert speech.sample_rate == 16000 and labels is None and record["vocals"]["ran"] == "original"
    np.testing.assert_array_equal(speech.samples, want)


def test_folder_without_preparation_models_falls_back_out_loud(hallo_folder, astronaut, tmp_path, caplog):  # noqa: F811
    root, _ = hallo_folder
    with caplog.at_level(logging.WARNING):
        pipe = load_pipeline(root, device="cpu", dtype="fp32")
    warned = [r.getMessage() for r in caplog.records]
    assert sum("face_landmarker_v2_with_blendshapes.task not found" in m for m in warned) == 1
    assert sum("Kim_Vocal_2.onnx not found" in m for m in warned) == 1
    res = pipe.generate(astronaut, _speech(tmp_path), tmp_path / "out.mp4", GenerateOptions(steps=1), size=64)
    prep = res.sidecar["preparation"]
    assert {k: v["ran"] for k, v in prep.items()} == {"landmarks": "fallback", "identity": "fallback",
                                                       "vocals": "fallback"}
    assert prep["landmarks"]["method"].startswith("fallback:haar")
    assert res.sidecar["size"] == 64


def test_hallo_video_has_hallos_frame_count(hallo_folder, astronaut, tmp_path):  # noqa: F811
    """Hallo cuts its frames to ``math.ceil(n / 16000 * 25)`` (floating point): 4480 samples give
    8 frames where the exact count is 7; the video has Hallo's 8, the embedded model keeps 7."""
    from talkfast.io.video import probe_video

    root, _ = hallo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    path = tmp_path / "short.wav"
    sf.write(path, 0.1 * np.sin(np.arange(4480) / 7.0).astype(np.float32), 16000)
    res = pipe.generate(astronaut, path, tmp_path / "out.mp4", GenerateOptions(steps=1), size=64)
    assert res.frames == 8 and res.sidecar["frames"] == 8
    assert probe_video(res.path).num_frames == 8


def test_prep_overrides_from_the_command_line(full_folder, astronaut, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    code = main(["generate", "--checkpoint", str(full_folder), "-s", str(astronaut), "-a", str(_speech(tmp_path)),
                 "-o", str(out), "--steps", "1", "--size", "64", "--accel", "off", "-q",
                 "--prep", "vocals=none", "--prep", f"identity={full_folder / MODELS}"])
    assert code == 0
    import json

    prep = json.loads(out.with_suffix(".json").read_text())["preparation"]
    assert prep["vocals"]["ran"] == "fallback" and prep["vocals"]["why"] == "skipped with --prep"
    assert prep["identity"]["ran"] == "original"
    with pytest.raises(InputError, match="not a preparation step of hallo"):
        load_pipeline(full_folder, device="cpu", dtype="fp32", prep={"emotion": "none"})
    assert main(["generate", "--checkpoint", str(full_folder), "-o", str(tmp_path / "x.mp4"),
                 "--prep", "vocals"]) != 0
    assert "STEP=PATH" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- MEMO
@pytest.fixture
def memo_full(tmp_path, monkeypatch, e2v_dir):  # noqa: F811
    import talkfast.models.memo_checkpoint as memo_checkpoint
    from test_emotion import _classifier_dir
    from test_memo import _randomized, _write_memo_folder

    from talkfast.models.config import MEMO_TINY

    cfg = MEMO_TINY.replace(image_embed_dim=512)
    monkeypatch.setattr(memo_checkpoint, "get_preset", lambda name: cfg)
    root = tmp_path / "memo"
    _write_memo_folder(root, _randomized(cfg))
    models = root / "misc" / "face_analysis" / "models"
    models.mkdir(parents=True)
    make_detector(models / "scrfd_10g_bnkps.onnx", [SMALL, LARGE])
    make_recognizer(models / "glintr100.onnx")
    (root / "misc" / "vocal_separator").mkdir()
    kim = _scale_model(root / "misc" / "vocal_separator" / "Kim_Vocal_2.onnx")
    monkeypatch.setitem(V.MDX_MODEL_DATA, V.model_hash(kim), KIM)
    _classifier_dir(root, layers=2, channels=8, in_features=16)  # the tiny emotion2vec's width
    shutil.copytree(e2v_dir, root / "emotion2vec_plus_large")
    return root


def test_memo_folder_runs_identity_vocals_and_emotion_per_clip(memo_full, astronaut, tmp_path, monkeypatch):
    from talkfast.audio.emotion import EmotionLabeller
    from talkfast.io.audio import load_audio

    pipe = load_pipeline(memo_full, device="cpu", dtype="fp32")
    path = _speech(tmp_path, 0.6)
    speech, labels, record = pipe.prepare_speech(load_audio(path), 30)
    assert {k: v["ran"] for k, v in record.items()} == {"vocals": "original", "emotion": "original"}
    # MEMO's labels read the 16 kHz copy of the input (not the vocals), over S' frames in clips
    V.ffmpeg_resample(path, tmp_path / "copy16.wav")
    wave, _ = sf.read(tmp_path / "copy16.wav", dtype="int16", always_2d=True)
    frames = int(np.ceil(len(speech.samples) / 16000 * 30))
    padded = -(-frames // 4) * 4  # the tiny model's clips of 4 frames
    want = EmotionLabeller.load(memo_full / "emotion2vec_plus_large", memo_full).clip_labels(wave.T, padded, 4)
    assert labels == want and len(labels) == padded // 4
    np.testing.assert_array_equal(
        speech.samples, V.separate_vocals(path, memo_full / "misc/vocal_separator/Kim_Vocal_2.onnx", "memo", tmp_path / "v"))
    seen = []
    import talkfast.pipeline.memo as memo_module

    real = memo_module.memo_model

    def spy(net, context, tokens, emotion, *args):
        seen.append(emotion)
        return real(net, context, tokens, emotion, *args)

    monkeypatch.setattr(memo_module, "memo_model", spy)
    res = pipe.generate(astronaut, path, tmp_path / "memo.mp4", GenerateOptions(steps=1), size=64)
    assert seen == labels[: len(seen)] and len(seen) == res.clips
    prep = res.sidecar["preparation"]
    assert prep["identity"]["ran"] == "original" and prep["emotion"]["clip_labels"] == labels
    assert res.sidecar["emotion"] == "per clip (emotion2vec)"


def test_memo_emotion_given_replaces_the_labels_and_skips_the_models(memo_full, tmp_path):
    pipe = load_pipeline(memo_full, device="cpu", dtype="fp32", emotion="happy")
    assert pipe.prep.emotion_model is None
    from talkfast.io.audio import load_audio

    _, labels, record = pipe.prepare_speech(load_audio(_speech(tmp_path, 0.3)), 30)
    assert labels is None and record["emotion"] == {"ran": "given", "label": "happy"}
