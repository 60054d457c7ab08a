"""The identity embedding of Hallo and MEMO (talkfast.face.identity) against insightface's own API.

No insightface weights ship anywhere reachable, so the tests build stand-ins with the originals'
signatures (routed by insightface exactly as scrfd_10g_bnkps.onnx and glintr100.onnx are):

* detector: input ``input.1`` [1, 3, ?, ?], 9 outputs (scores, boxes, keypoints at strides 8, 16,
  32; 2 anchors). Boxes and keypoints are constants placing faces at known spots of the 640x640
  detector image; the scores are constants times ``min(max(input) + 1, 1)``, so any photo with a
  white pixel has those faces and an all-black photo none.
* recognizer: input [N, 3, 112, 112] -> 8x8 average pool -> fixed random linear map -> [N, 512].

Every expected embedding is re-computed through insightface's ``FaceAnalysis`` (0.7.3, the
originals' pin) called as the originals call it, ``.get`` on the BGR array with their largest-area
selection (Hallo 8fd7c57 image_processor.py, MEMO a5aee30 vision_utils.py), and compared exactly.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # insightface 0.7.3 imports albumentations
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("insightface")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from talkfast.errors import CheckpointError, InputError  # noqa: E402
from talkfast.face.identity import (  # noqa: E402
    FaceIdentity,
    IdentityInfo,
    hallo_face_models_dir,
    memo_face_models_dir,
)

STRIDES = (8, 16, 32)
DET = 640  # det_size of both originals
# 5 keypoints as fractions of a face box (eyes, nose, mouth corners), roughly ArcFace's template.
KPS_FRAC = np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)


def _counts(stride: int) -> int:
    return (DET // stride) ** 2 * 2


def _save(model, path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_detector(path, faces, n_outputs: int = 9) -> None:
    """SCRFD-like detector. ``faces``: (stride, gx, gy, anchor, score, (x0, y0, x1, y1)) with the box
    in the 640x640 detector image; the anchor centre is (gx * stride, gy * stride)."""
    scores = {s: np.zeros((_counts(s), 1), np.float32) for s in STRIDES}
    boxes = {s: np.zeros((_counts(s), 4), np.float32) for s in STRIDES}
    kps = {s: np.zeros((_counts(s), 10), np.float32) for s in STRIDES}
    for stride, gx, gy, anchor, score, (x0, y0, x1, y1) in faces:
        i = (gy * (DET // stride) + gx) * 2 + anchor
        cx, cy = gx * stride, gy * stride
        scores[stride][i] = score
        boxes[stride][i] = np.array([cx - x0, cy - y0, x1 - cx, y1 - cy], np.float32) / stride
        pts = np.array([x0, y0], np.float32) + KPS_FRAC * np.array([x1 - x0, y1 - y0], np.float32)
        kps[stride][i] = ((pts - np.array([cx, cy], np.float32)) / stride).reshape(-1)
    nodes = [
        helper.make_node("ReduceMax", ["input.1"], ["mx"], keepdims=0),
        helper.make_node("Add", ["mx", "one"], ["mx1"]),
        helper.make_node("Min", ["mx1", "one"], ["gate"]),
    ]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    outputs = []
    groups = [("score", scores, 1), ("bbox", boxes, 4), ("kps", kps, 10)]
    for kind, table, width in groups:
        for s in STRIDES:
            name = f"{kind}_{s}"
            inits.append(numpy_helper.from_array(table[s], f"c_{name}"))
            op = ["Mul", [f"c_{name}", "gate"]] if kind == "score" else ["Identity", [f"c_{name}"]]
            nodes.append(helper.make_node(op[0], op[1], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{s}", width]))
    outputs = outputs[:n_outputs] if n_outputs <= 9 else outputs + outputs[: n_outputs - 9]
    if n_outputs > 9:  # duplicate names are invalid: rename the extra outputs
        for k, o in enumerate(outputs[9:]):
            nodes.append(helper.make_node("Identity", [o.name], [f"extra{k}"]))
            outputs[9 + k] = helper.make_tensor_value_info(f"extra{k}", TensorProto.FLOAT, ["e", None])
    graph = helper.make_graph(
        nodes, "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs, inits,
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def make_recognizer(path, dim: int = 512, declared=None, seed: int = 0) -> None:
    """ArcFace-like recognizer: [N, 3, 112, 112] -> avg-pool 8 -> fixed linear map -> [N, dim]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3 * 14 * 14, dim)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(dim) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("Add", ["proj", "B"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim if declared is None else declared])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


# Face boxes in the 640 detector image. A small face with the higher score, a larger one after it.
SMALL = (32, 4, 4, 1, 0.95, (100.0, 90.0, 180.0, 190.0))  # 80 x 100
LARGE = (8, 50, 40, 0, 0.70, (360.0, 250.0, 480.0, 400.0))  # 120 x 150
# Two faces of equal area: the second listed has the higher score, so the detector returns it first.
TIE_A = (8, 20, 20, 0, 0.60, (120.0, 120.0, 200.0, 220.0))
TIE_B = (32, 12, 10, 1, 0.90, (350.0, 280.0, 430.0, 380.0))


def _models(root, faces, **rec) -> str:
    d = root / "models"
    d.mkdir(parents=True)
    make_detector(d / "scrfd_10g_bnkps.onnx", faces)
    make_recognizer(d / "glintr100.onnx", **rec)
    return str(d)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    return _models(tmp_path_factory.mktemp("two"), [SMALL, LARGE])


def _photo(seed: int = 1, w: int = 320, h: int = 240) -> Image.Image:
    """Random RGB noise 320x240: the detector scales it by 2 into 640x480 (+ black padding)."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[0, 0] = 255
    return Image.fromarray(arr, "RGB")


def _one_thread():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return opts


def _insightface_reference(models_dir, photo):
    """The originals' computation through insightface's API with their arguments (name="" and
    root=<the folder above models/>)."""
    import cv2
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name="", root=os.path.dirname(models_dir), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    faces = app.get(cv2.cvtColor(np.array(photo), cv2.COLOR_RGB2BGR))
    if not faces:
        return np.zeros(512), faces
    ranked = sorted(faces, key=lambda x: (x["bbox"][2] - x["bbox"][0]) * (x["bbox"][3] - x["bbox"][1]),
                    reverse=True)
    return ranked[0]["embedding"], faces


def _image_box(face_spec, scale: float = 2.0):
    return tuple(v / scale for v in face_spec[5])


def test_largest_face_matches_insightface_exactly(two_faces):
    photo = _photo()
    emb, info = FaceIdentity(two_faces, threads=1).embed(photo)
    ref, faces = _insightface_reference(two_faces, photo)
    assert len(faces) == 2
    # insightface returns the higher-scored small face first; the originals take the larger one.
    assert tuple(faces[0]["bbox"]) == pytest.approx(_image_box(SMALL))
    assert emb.dtype == torch.float32 and emb.shape == (512,)
    assert ref.dtype == np.float32
    np.testing.assert_array_equal(emb.numpy(), ref)  # exact
    assert isinstance(info, IdentityInfo) and info.face_found and info.num_faces == 2
    assert info.bbox == pytest.approx(_image_box(LARGE), abs=0)  # hand-computed: det box / det_scale 2
    assert info.det_score == pytest.approx(0.70)
    # Not the small face's embedding, and the raw (not unit-norm) embedding.
    small = [f for f in faces if f["bbox"][0] < 100][0]["embedding"]
    assert not np.allclose(emb.numpy(), small)
    assert abs(float(np.linalg.norm(ref)) - 1.0) > 1e-3


def test_non_square_and_grey_photo_are_converted_like_the_originals(two_faces):
    grey = _photo(seed=3, w=200, h=300).convert("L")  # portrait: det_scale = 640 / 300
    emb, info = FaceIdentity(two_faces, threads=1).embed(grey)
    ref, _ = _insightface_reference(two_faces, grey.convert("RGB"))
    np.testing.assert_array_equal(emb.numpy(), ref)
    scale = 640 / 300
    assert info.bbox == pytest.approx(tuple(v / scale for v in LARGE[5]), rel=1e-6)


def test_equal_areas_keep_the_detector_order(tmp_path):
    d = _models(tmp_path, [TIE_A, TIE_B])
    photo = _photo(seed=2)
    emb, info = FaceIdentity(d, threads=1).embed(photo)
    ref, faces = _insightface_reference(d, photo)
    areas = [(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]) for f in faces]
    assert len(faces) == 2 and areas[0] == areas[1]
    np.testing.assert_array_equal(emb.numpy(), ref)
    assert info.bbox == pytest.approx(_image_box(TIE_B), abs=0)  # first in detector order (score 0.9)


def test_no_face_gives_zeros(two_faces):
    black = Image.new("RGB", (320, 240))
    emb, info = FaceIdentity(two_faces, threads=1).embed(black)
    ref, faces = _insightface_reference(two_faces, black)
    assert faces == []
    assert ref.dtype == np.float64  # the originals' np.zeros(512)
    np.testing.assert_array_equal(emb.numpy(), ref.astype(np.float32))
    assert emb.dtype == torch.float32 and emb.shape == (512,) and not emb.any()
    assert not info.face_found and info.num_faces == 0 and info.bbox is None and info.det_score is None
    assert "no face" in info.message.lower()


def test_never_downloads(two_faces, tmp_path, monkeypatch):
    import insightface.model_zoo.model_zoo as mz
    import insightface.utils.storage as storage

    def refuse(*args, **kwargs):
        raise AssertionError("insightface tried to download")

    monkeypatch.setattr(mz, "download_onnx", refuse)
    monkeypatch.setattr(storage, "download_file", refuse)
    cwd = tmp_path / "cwd"  # junk in the working folder is never read
    cwd.mkdir()
    (cwd / "junk.onnx").write_bytes(b"not a model")
    monkeypatch.chdir(cwd)
    emb, info = FaceIdentity(two_faces, threads=1).embed(_photo())
    assert info.face_found and emb.abs().sum() > 0
    with pytest.raises(CheckpointError, match="does not exist"):  # refused before insightface sees it
        FaceIdentity(tmp_path / "absent" / "models")
    assert not (tmp_path / "absent").exists()


def test_folder_not_named_models_loads_the_same_files(two_faces, tmp_path):
    import shutil

    other = tmp_path / "faces"
    shutil.copytree(two_faces, other)
    photo = _photo()
    emb, _ = FaceIdentity(other).embed(photo)
    ref, _ = _insightface_reference(two_faces, photo)
    np.testing.assert_array_equal(emb.numpy(), ref)


def test_other_insightface_version_is_refused(two_faces, monkeypatch):
    # insightface 2.x reads the originals' name="" as the working folder, not <root>/models/.
    import insightface

    monkeypatch.setattr(insightface, "__version__", "2.1")
    _expect(two_faces, "insightface 2.1", "0.7.3")


def test_insightface_is_the_originals_version():
    import insightface

    assert insightface.__version__ == "0.7.3"  # Hallo 8fd7c57 requirements.txt, MEMO a5aee30 pyproject


def test_insightface_prints_go_to_the_log(two_faces, capsys):
    FaceIdentity(two_faces, threads=1).embed(_photo())
    assert capsys.readouterr().out == ""


def test_models_dir_helpers():
    assert hallo_face_models_dir("pm").as_posix() == "pm/face_analysis/models"
    assert memo_face_models_dir("ckpt").as_posix() == "ckpt/misc/face_analysis/models"


# ---- errors --------------------------------------------------------------------------------------

def _expect(models_dir, *needles):
    with pytest.raises(CheckpointError) as err:
        FaceIdentity(models_dir, threads=1)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    return err.value


def test_missing_folder(tmp_path):
    _expect(tmp_path / "face_analysis" / "models", "models", "does not exist")


def test_folder_without_models(tmp_path):
    _expect(tmp_path, "no .onnx")


def test_missing_recognizer(tmp_path):
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL])
    _expect(tmp_path, "recognizer", "scrfd_10g_bnkps.onnx")


def test_missing_detector(tmp_path):
    make_recognizer(tmp_path / "glintr100.onnx")
    _expect(tmp_path, "detector", "glintr100.onnx")


@pytest.mark.parametrize("content", ["random", "text", "truncated", "empty"])
def test_corrupt_or_not_onnx(tmp_path, content):
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL])
    target = tmp_path / "glintr100.onnx"
    if content == "random":
        target.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "text":
        target.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 260694151\n")
    elif content == "truncated":
        make_recognizer(target)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"")
    _expect(tmp_path, "glintr100.onnx")


def test_recognizer_with_128_outputs(tmp_path):
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL])
    make_recognizer(tmp_path / "glintr100.onnx", dim=128)
    _expect(tmp_path, "glintr100.onnx", "128", "512")


@pytest.mark.parametrize("n_outputs", [6, 7])
def test_detector_with_wrong_outputs(tmp_path, n_outputs):
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL], n_outputs=n_outputs)
    make_recognizer(tmp_path / "glintr100.onnx")
    _expect(tmp_path, "scrfd_10g_bnkps.onnx", f"{n_outputs} outputs")


def test_detector_with_a_batch_axis(tmp_path):
    # insightface 0.7.3's RetinaFace decodes [candidates, k] only (a batch axis fails in .get).
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL])
    model = onnx.load(str(tmp_path / "scrfd_10g_bnkps.onnx"))
    out = model.graph.output[0]
    out.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    onnx.save(model, str(tmp_path / "scrfd_10g_bnkps.onnx"))
    make_recognizer(tmp_path / "glintr100.onnx")
    _expect(tmp_path, "scrfd_10g_bnkps.onnx", "batch axis")


def test_threads_reach_onnxruntime(two_faces):
    app = FaceIdentity(two_faces, threads=1)._app
    assert {t: m.session.get_session_options().intra_op_num_threads for t, m in app.models.items()} == \
        {"detection": 1, "recognition": 1}


def test_model_onnxruntime_cannot_open_is_named(tmp_path):
    # Parses as ONNX and has a recognizer's signature, but uses an operator that does not exist.
    make_detector(tmp_path / "scrfd_10g_bnkps.onnx", [SMALL])
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["input.1"], ["683"], domain="talkfast.test")], "bad",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("talkfast.test", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "glintr100.onnx"))
    _expect(tmp_path, "glintr100.onnx", "could not load")


def test_recognizer_whose_size_shows_only_when_run(tmp_path):
    # Declares a symbolic width, so it passes the signature check, then outputs 128 numbers.
    d = _models(tmp_path, [LARGE], dim=128, declared="D")
    identity = FaceIdentity(d, threads=1)
    with pytest.raises(CheckpointError, match="glintr100.onnx"):
        identity.embed(_photo())


def test_corrupt_extra_model_is_named(tmp_path):
    # The originals load every .onnx of the folder; a broken genderage.onnx fails there too.
    d = _models(tmp_path, [SMALL])
    (tmp_path / "models" / "genderage.onnx").write_bytes(b"\x08\x07garbage")
    _expect(d, "genderage.onnx")


def test_embed_needs_a_pil_image(two_faces):
    with pytest.raises(InputError):
        FaceIdentity(two_faces, threads=1).embed(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("module", ["insightface", "onnxruntime"])
def test_missing_package_is_named(two_faces, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    err = _expect(two_faces, module, "pip install")
    assert isinstance(err, CheckpointError)


def test_folder_is_left_unchanged(two_faces):
    # The folder check itself leaves the folder as it was (no files written, e.g. no download zip).
    before = sorted(os.listdir(two_faces))
    FaceIdentity(two_faces, threads=1)
    assert sorted(os.listdir(two_faces)) == before
