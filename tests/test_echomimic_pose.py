"""EchoMimic's pose variants (issue 15): the face-mesh drawing of its FaceMeshVisualizer pinned by
hand, pose inputs (landmark .pkl/.npy folders, drawn frames, a video of drawings) read safely, and
the pose path end to end at a tiny width (per-frame FaceLocator features gathered per window, no
noise clamp, windows shifting by 3, degenerate accelerator settings exact)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from test_echomimic import write_folder
from test_echomimic_pipeline import PORTRAIT, TOY, randomized
from test_whisper_features import DIMS, openai_state_dict
from tiny_pipeline import DEGENERATE

from talkfast.accelerators import build_accelerator
from talkfast.app.cli import main
from talkfast.errors import InputError
from talkfast.face.pose import PoseSequence, draw_face_pose, read_landmarks
from talkfast.io.video import probe_video
from talkfast.models import loading
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOY_POSE = TOY.replace(name="echomimic_tiny_pose", face_locator_in=3)


def _points(**at) -> np.ndarray:
    """478 face-mesh points off the canvas, except ``at`` (index -> (x, y) pixels of a 512 image)."""
    pts = np.full((478, 3), -50.0)
    for key, xy in at.items():
        pts[int(key.lstrip("p")), :2] = xy
    return pts


def test_drawing_by_hand():
    # left eye edge 263-249 from (100, 100) to (110, 100): a 2-px line in (180, 200, 10)
    # pupil 468 at (300.5, 200.25): a 6x6 square at rows 197..202, cols 297..302 in (10, 200, 250)
    # lip points 61 and 146 (a lip edge EchoMimic does not draw) and the nose tip at (0, 0), whose
    # square slices image[-3:3] and so draws nothing (EchoMimic's numpy slicing)
    img = draw_face_pose(_points(p263=(100, 100), p249=(110, 100), p468=(300.5, 200.25), p61=(50, 400),
                                 p146=(80, 400), p4=(0, 0)))
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert tuple(img[100, 105]) == (180, 200, 10) and tuple(img[100, 100]) == (180, 200, 10)
    assert not img[110:, 100:111].any()  # nothing below the line's thickness
    assert (img[197:203, 297:303] == (10, 200, 250)).all()
    assert not img[196, 297:303].any() and not img[203, 297:303].any()
    assert not img[395:405, 40:90].any()  # no mouth
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (180, 200, 10), (10, 200, 250)}
    # a point exactly on the right edge still ends a line (MediaPipe's isclose) on the last column,
    # but a pupil there is skipped (x >= 1)
    edge = draw_face_pose(_points(p33=(500, 50), p7=(512, 50), p473=(512, 300)))
    assert tuple(edge[50, 511]) == (10, 200, 180) and not edge[290:310, 500:].any()
    small = draw_face_pose(_points(p263=(100, 100), p249=(110, 100)), size=64)
    assert small.shape == (64, 64, 3) and small.any()
    with pytest.raises(InputError, match="face mesh"):
        draw_face_pose(np.zeros((68, 2)))


class Payload:  # pickled into a pose file: unpickling it would run os.system
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pose_files_are_read_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "0.pkl"
    pts = _points(p263=(100, 100))
    good.write_bytes(pickle.dumps(pts))
    np.testing.assert_array_equal(read_landmarks(good), pts)
    bad = tmp_path / "1.pkl"
    bad.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError, match="numpy array only"):
        read_landmarks(bad)
    assert not (tmp_path / "PWNED").exists()


def test_pose_sequences_from_landmarks_drawings_and_video(tmp_path):
    lm = tmp_path / "landmarks"
    lm.mkdir()
    drawn = []
    for i in range(3):
        pts = _points(p263=(100 + 10 * i, 100), p249=(200, 150 + 20 * i))
        (lm / f"{i}.pkl").write_bytes(pickle.dumps(pts)) if i != 1 else np.save(lm / f"{i}.npy", pts)
        drawn.append(draw_face_pose(pts, 64))
    seq = PoseSequence(lm, 64)
    assert len(seq) == 3
    torch.testing.assert_close(seq.frames(1, 2), torch.from_numpy(np.stack(drawn[1:])).permute(0, 3, 1, 2) / 255.0)
    pngs = tmp_path / "drawn"
    pngs.mkdir()
    for i, d in enumerate(drawn):
        imageio.imwrite(pngs / f"{i}.png", d)
    torch.testing.assert_close(PoseSequence(pngs, 64).frames(0, 3), seq.frames(0, 3))
    video = tmp_path / "pose.mp4"
    imageio.mimwrite(video, [draw_face_pose(_points(p263=(100, 100), p249=(400, 300)), 64)] * 5, fps=24,
                     macro_block_size=1)
    vs = PoseSequence(video, 64)
    assert len(vs) == 5 and vs.frames(2, 3).shape == (3, 3, 64, 64) and vs.frames(2, 3).max() > 0.5
    (lm / "5.pkl").write_bytes(pickle.dumps(_points()))
    with pytest.raises(InputError, match=r"misses frame\(s\) \[3, 4\]"):
        PoseSequence(lm, 64)
    (lm / "5.pkl").unlink()
    imageio.imwrite(lm / "3.png", drawn[0])
    with pytest.raises(InputError, match="mixes"):
        PoseSequence(lm, 64)
    with pytest.raises(InputError, match="does not exist"):
        PoseSequence(tmp_path / "nothing", 64)


# ------------------------------------------------------------------------------ the pose pipeline
@pytest.fixture
def pose_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "get_preset", lambda name: TOY_POSE if name == "echomimic_pose" else TOY)
    net = randomized(TOY_POSE, seed=4)
    root = write_folder(net, tmp_path / "pretrained_weights", "pose")
    (root / "audio_processor").mkdir()
    torch.save({"dims": DIMS, "model_state_dict": openai_state_dict()}, root / "audio_processor" / "whisper_tiny.pt")
    torch.manual_seed(0)
    AutoencoderKL(**loading.small_vae_config(TOY_POSE)).save_pretrained(root / "sd-vae-ft-mse")
    import soundfile as sf

    data, rate = sf.read(PORTRAIT.parent / "speech.wav", dtype="float32")
    sf.write(tmp_path / "speech.wav", data[: int(rate * 0.6)], rate)  # 16 frames at 24 fps (EchoMimic's count)
    poses = tmp_path / "poses"
    poses.mkdir()
    for i in range(20):  # the eyes move right frame by frame
        (poses / f"{i}.pkl").write_bytes(pickle.dumps(_points(p263=(150 + 8 * i, 200), p249=(250 + 8 * i, 200),
                                                             p33=(100, 220), p7=(200, 220 + 4 * i))))
    return root, tmp_path / "speech.wav", poses


def _run(pipe, speech, poses, acc=None, steps=3):
    pieces = []
    pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=steps, fps=24), accelerator=acc, on_clip=pieces.append,
                  pose=poses)
    return torch.cat(pieces)


def test_pose_variant_generates_with_a_feature_per_frame(pose_folder, tmp_path, capsys):
    root, speech, poses = pose_folder
    out = tmp_path / "pose.mp4"
    code = main(["generate", "--checkpoint", str(root), "--variant", "pose", "--pose", str(poses), "-s", str(PORTRAIT),
                 "-a", str(speech), "-o", str(out), "--steps", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    info = probe_video(out)
    assert info.num_frames == 16 and info.has_audio
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["variant"] == "pose" and side["pose"]["frames"] == 20 and side["windows"]["shift"] == 3
    pipe = load_pipeline(root, device="cpu", dtype="fp32", variant="pose")
    assert pipe.pose and pipe.shift == 3
    assert pipe.initial_noise(15, 8, 8, torch.Generator().manual_seed(0)).abs().max() > 1.5  # not clamped
    # the drawings reach the model: other poses, another video
    still = tmp_path / "still"
    still.mkdir()
    for i in range(16):
        np.save(still / f"{i}.npy", _points(p263=(150, 200), p249=(250, 200)))
    assert (_run(pipe, speech, poses, steps=2) - _run(pipe, speech, still, steps=2)).abs().max() > 1e-6
    # the right error before any work: too few pose frames, a pose input for the default variant
    short = tmp_path / "short"
    short.mkdir()
    np.save(short / "0.npy", _points())
    with pytest.raises(InputError, match="has 1 frames.*needs 16"):
        pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=2, fps=24), pose=short)
    with pytest.raises(InputError, match="needs a pose input"):
        pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=2, fps=24))
    code = main(["generate", "--random-weights", "--model", "tiny", "--pose", str(poses), "-o", str(tmp_path / "x.mp4"),
                 "-q"])
    assert code == 2 and "--pose is for EchoMimic" in capsys.readouterr().err


def test_pose_features_are_gathered_at_each_windows_frames(pose_folder):
    """The window model reads frame j's feature for frame j: a call on frames (2, 0) gets the
    features of frames 2 and 0 in that order."""
    from talkfast.pipeline.echomimic import window_model

    root, _, _ = pose_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32", variant="pose")
    seen = {}

    class Spy(torch.nn.Module):
        def denoise(self, x, t, cond, plan):
            seen["face"] = cond.face_feature
            return x

    face = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 2, 4, 2, 2)
    run = window_model(Spy(), torch.zeros(4, 3, 8), face, True, torch.float32)
    run(torch.zeros(1, 4, 2, 2, 2), torch.tensor([500]), None, (0, 1), torch.tensor([[2, 0]]))
    got = seen["face"]
    assert got.shape == (2, 2, 2, 2, 2)
    assert (got[0] == 0).all()  # the unconditional half: zeros
    assert (got[1, :, 0] == 2).all() and (got[1, :, 1] == 0).all()
    assert pipe.pose


@pytest.mark.parametrize("name", ["lightningcp", "lightningcp+dfa"])
def test_degenerate_accelerators_equal_the_pose_baseline(pose_folder, name):
    root, speech, poses = pose_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32", variant="pose")
    base = _run(pipe, speech, poses)
    acc = build_accelerator(dataclasses.replace(DEGENERATE[name]))
    torch.testing.assert_close(_run(pipe, speech, poses, acc), base, rtol=0, atol=0)
    acc.detach()


def test_pose_acc_variant_runs_six_steps_without_guidance(pose_folder):
    root, speech, poses = pose_folder
    write_folder(randomized(TOY_POSE, seed=5), root, "pose_acc")
    pipe = load_pipeline(root, device="cpu", dtype="fp32", variant="pose_acc")
    res = pipe.generate(PORTRAIT, speech, None, pose=poses)
    o = res.sidecar["options"]
    assert (pipe.variant, o["steps"], o["guidance"], o["fps"]) == ("pose_acc", 6, 1.0, 24)
    assert res.sidecar["window_calls"] == 6 * 2 and res.sidecar["windows"]["shift"] == 3
