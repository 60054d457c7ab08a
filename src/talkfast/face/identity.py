"""The identity embedding (image context) of Hallo and MEMO, through insightface's ``FaceAnalysis``.

Matched against:

* Hallo, fudan-generative-vision/hallo 8fd7c57, ``hallo/datasets/image_processor.py``
  (``ImageProcessor.__init__`` and ``preprocess``) with ``configs/inference/default.yaml``
  (``face_analysis.model_path: ./pretrained_models/face_analysis``) and ``scripts/inference.py``.
* MEMO, memoavatar/memo a5aee30, ``memo/utils/vision_utils.py`` (``preprocess_image``) with
  ``inference.py`` (``<misc_model_dir>/misc/face_analysis``).
* insightface 0.7.3 (deepinsight/insightface ``python-package``, the version both originals pin
  and the one talkfast runs): ``app/face_analysis.py``, ``model_zoo/model_zoo.py`` (routing by
  signature), ``model_zoo/retinaface.py`` (the detector class it routes SCRFD to),
  ``model_zoo/arcface_onnx.py``, ``utils/face_align.py``, ``utils/storage.py``.

What both originals do, and what :class:`FaceIdentity` does the same way:

1. ``FaceAnalysis(name="", root=<folder>, providers=[CUDA, CPU])`` then
   ``prepare(ctx_id=0, det_size=(640, 640))`` with the default detection threshold 0.5. insightface
   0.7.3 resolves that to ``<root>/models/`` (``ensure_available("models", "", root)``, which
   *downloads* a zip when the folder is missing) and loads every ``*.onnx`` there in sorted name
   order, keeping the first model of each task. So the folder holding the ``.onnx`` files is
   ``pretrained_models/face_analysis/models/`` for Hallo and ``misc/face_analysis/models/`` for MEMO
   (:func:`hallo_face_models_dir`, :func:`memo_face_models_dir`).
2. insightface gets the **original photo** (opened and ``convert("RGB")``; neither original resizes
   or crops it before detection: the 512x512 resize only makes the pixel values) as a **BGR** array:
   ``cv2.cvtColor(np.array(rgb), cv2.COLOR_RGB2BGR)``.
3. Of the faces returned, the one with the largest bbox area ``(x1 - x0) * (y1 - y0)`` wins
   (``sorted(..., reverse=True)``, which is stable: on equal areas the detector's order decides);
   its **raw** ``face["embedding"]`` (the recognizer's float32 output, not ``normed_embedding``).
4. No face: ``np.zeros(512)`` (float64 in the originals; returned here cast to float32, where it is
   still exactly zero).

Differences, on purpose:

* The folder is checked before insightface sees it (it exists, holds a detector and a recognizer
  with the right signatures), so ``ensure_available`` always finds it and never downloads. A
  folder not named ``models`` (``--prep identity=DIR``) is passed as an absolute ``name``, which
  insightface's ``os.path.join(root, "models", name)`` takes as it is.
* Providers: CPU only (``CPUExecutionProvider``); ``ctx_id=0`` changes nothing on CPU.
* Only the detector and the recognizer run on each face (``allowed_modules``): the originals also
  run the landmark and gender/age models, whose results never reach the embedding. Every ``.onnx``
  in the folder is still loaded, as in the originals, so a broken one fails here as it fails there.
* ``threads``: insightface 0.7.3 hands onnxruntime only the providers, so with ``threads`` the
  detector's and recognizer's sessions are rebuilt from the same files with that thread count
  (the results do not depend on it). insightface's loading messages (it prints them) go to the
  debug log instead of stdout.
* MEMO builds ``FaceAnalysis`` anew for every photo, Hallo once per run; the result is the same.
  Here one :class:`FaceIdentity` can embed many photos.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from talkfast.errors import CheckpointError, InputError
from talkfast.paths import display_path

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDING_DIM",
    "DET_SIZE",
    "FaceIdentity",
    "INSIGHTFACE_VERSION",
    "IdentityInfo",
    "hallo_face_models_dir",
    "memo_face_models_dir",
]

EMBEDDING_DIM = 512
DET_SIZE = (640, 640)
_DET_THRESH = 0.5  # insightface's default, used by both originals
INSIGHTFACE_VERSION = "0.7.3"  # Hallo 8fd7c57 requirements.txt, MEMO a5aee30 pyproject.toml
# ModelRouter: SCRFD with keypoints has 9 outputs (3 strides x score/bbox/kps, 2 anchors) or 15
# (5 strides); ArcFace needs the 5 keypoints to align the face.
_DETECTOR_OUTPUTS_WITH_KPS = (9, 15)


def hallo_face_models_dir(pretrained_models: str | os.PathLike[str]) -> Path:
    """Hallo's folder of face ``.onnx`` files: ``<pretrained_models>/face_analysis/models``
    (its config's ``face_analysis.model_path`` plus the ``models`` insightface appends)."""
    return Path(pretrained_models) / "face_analysis" / "models"


def memo_face_models_dir(misc_model_dir: str | os.PathLike[str]) -> Path:
    """MEMO's folder of face ``.onnx`` files: ``<misc_model_dir>/misc/face_analysis/models``
    (``inference.py``'s root plus the ``models`` insightface appends)."""
    return Path(misc_model_dir) / "misc" / "face_analysis" / "models"


@dataclass(frozen=True)
class IdentityInfo:
    """What :meth:`FaceIdentity.embed` found.

    ``face_found``: False when the detector returned nothing (the embedding is then all zeros).
    ``num_faces``: faces the detector returned. ``bbox``: the chosen face's ``(x0, y0, x1, y1)`` in
    the photo's pixels (float), ``det_score`` its detector score; both None without a face.
    ``message``: one line for the user.
    """

    face_found: bool
    num_faces: int
    bbox: tuple[float, float, float, float] | None
    det_score: float | None
    message: str


@dataclass(frozen=True)
class _Signature:
    task: str | None  # insightface's route: detection / recognition / landmark / attribute / ...
    n_outputs: int
    input_shape: tuple
    output_shapes: tuple


def _import_backends():
    """insightface, onnx and onnxruntime, imported here so the rest of talkfast works without them."""
    # insightface 0.7.3 imports albumentations (insightface.app.mask_renderer), whose import asks
    # PyPI for a newer version unless this is set; talkfast never goes online for that.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    missing = []
    for module in ("onnxruntime", "onnx", "insightface"):
        try:
            __import__(module)
        except ImportError as exc:  # also a missing dependency of insightface (albumentations, ...)
            missing.append((exc.name or module).split(".")[0])
    if missing:
        raise CheckpointError(
            "The identity embedding of Hallo and MEMO needs insightface's face models, run with "
            f"onnxruntime; missing Python package(s): {', '.join(missing)} "
            f"(pip install {' '.join(missing)}, or talkfast's 'prep' extra)."
        )
    import insightface
    import onnx
    import onnxruntime

    version = getattr(insightface, "__version__", "?")
    if version != INSIGHTFACE_VERSION:
        raise CheckpointError(
            f"insightface {version} is installed; talkfast calls it as Hallo and MEMO do, which needs "
            f"the version they pin, {INSIGHTFACE_VERSION} (newer versions read FaceAnalysis(name=\"\", "
            f"root=...) differently): pip install insightface=={INSIGHTFACE_VERSION}, or scripts/install.sh."
        )
    return onnx, onnxruntime


def _dims(value_info) -> tuple:
    """A graph value's shape as onnxruntime reports it: int, the symbol's name, or None."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def _route(path: Path, inputs: list, n_outputs: int) -> str | None:
    """insightface's ``ModelRouter`` decision, read from the graph instead of a live session.

    Returns the task, None for a model insightface ignores, or raises where insightface itself
    would fail with a raw exception (an index or a comparison of a symbolic size)."""
    if n_outputs >= 5:
        return "detection"
    shape = _dims(inputs[0])
    name = display_path(path)
    if len(shape) < 4:
        raise CheckpointError(
            f"{name}: its input has shape {list(shape)}; insightface's face models take images "
            "[N, 3, H, W]. The file is not one of the originals' face models."
        )
    h, w = shape[2], shape[3]
    if h == 192 and w == 192:
        return "landmark"
    if h == 96 and w == 96:
        return "attribute"
    if len(inputs) == 2 and h == 128 and w == 128:
        return "inswapper"
    if h == w:
        if not isinstance(h, int):
            raise CheckpointError(
                f"{name}: its input size is not fixed ({list(shape)}), so insightface cannot tell "
                "what model it is; a face recognizer takes [N, 3, 112, 112]."
            )
        if h >= 112 and h % 16 == 0:
            return "recognition"
    return None


def _inspect(path: Path, onnx) -> _Signature:
    name = display_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ValueError, ...
        raise CheckpointError(
            f"{name} is not a readable ONNX model ({type(exc).__name__}): the file is corrupt, "
            "truncated or not ONNX. Replace it with the original file."
        ) from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs or not graph.output or not graph.node:
        raise CheckpointError(
            f"{name} is not a usable ONNX model (no inputs, outputs or nodes): the file is corrupt "
            "or not ONNX. Replace it with the original file."
        )
    task = _route(path, inputs, len(graph.output))
    return _Signature(
        task=task,
        n_outputs=len(graph.output),
        input_shape=_dims(inputs[0]),
        output_shapes=tuple(_dims(o) for o in graph.output),
    )


def _check_detector(path: Path, sig: _Signature) -> None:
    name = display_path(path)
    if sig.n_outputs not in _DETECTOR_OUTPUTS_WITH_KPS:
        raise CheckpointError(
            f"{name}: a face detector with {sig.n_outputs} outputs; the originals' SCRFD detector "
            "(scrfd_10g_bnkps.onnx) has 9 (scores, boxes and 5 keypoints at strides 8, 16, 32), "
            "and the recognizer needs the keypoints."
        )
    shape = sig.input_shape
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise CheckpointError(f"{name}: detector input {list(shape)}; SCRFD takes [1, 3, H, W].")
    for out in sig.output_shapes:
        if len(out) != 2:
            raise CheckpointError(
                f"{name}: detector output of shape {list(out)}; SCRFD's outputs are "
                "[candidates, 1 | 4 | 10] (insightface 0.7.3's detector reads no batch axis)."
            )
    fmc = sig.n_outputs // 3
    for index, out in enumerate(sig.output_shapes):
        want = (1, 4, 10)[index // fmc]
        if isinstance(out[-1], int) and out[-1] != want:
            raise CheckpointError(
                f"{name}: detector output {index} has width {out[-1]}, SCRFD's has {want} "
                "(scores 1, boxes 4, keypoints 10)."
            )


def _check_recognizer(path: Path, sig: _Signature) -> None:
    name = display_path(path)
    if sig.n_outputs != 1:
        raise CheckpointError(
            f"{name}: a face recognizer with {sig.n_outputs} outputs; ArcFace (glintr100.onnx) "
            f"has one, the {EMBEDDING_DIM}-d embedding."
        )
    shape = sig.input_shape
    if isinstance(shape[1], int) and shape[1] != 3:
        raise CheckpointError(f"{name}: recognizer input {list(shape)}; ArcFace takes [N, 3, 112, 112].")
    out = sig.output_shapes[0]
    if len(out) != 2 or (isinstance(out[1], int) and out[1] != EMBEDDING_DIM):
        raise CheckpointError(
            f"{name}: the face recognizer outputs {list(out)}; Hallo's and MEMO's (glintr100.onnx) "
            f"output [N, {EMBEDDING_DIM}], the size their networks take."
        )


def _first_failing_session(files: list[Path], onnxruntime) -> Path | None:
    """The first file onnxruntime cannot open (only run after insightface failed, to name it)."""
    for path in files:
        try:
            onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:
            return path
    return None


class FaceIdentity:
    """insightface ``FaceAnalysis`` over a local folder of the originals' face models.

    ``models_dir`` is the folder holding the ``.onnx`` files (Hallo:
    ``pretrained_models/face_analysis/models``, MEMO: ``misc/face_analysis/models``). It must hold
    a face detector (SCRFD with keypoints, e.g. ``scrfd_10g_bnkps.onnx``) and a face recognizer
    with a 512-d output (e.g. ``glintr100.onnx``), told apart by their signatures as insightface
    does. ``threads`` sets onnxruntime's intra-op threads (None: onnxruntime's default, exactly
    the originals' arguments); the results do not depend on it.
    """

    def __init__(self, models_dir: str | os.PathLike[str], *, threads: int | None = None) -> None:
        onnx, onnxruntime = _import_backends()
        folder = Path(models_dir).expanduser()
        shown = display_path(folder)
        if not folder.is_dir():
            raise CheckpointError(
                f"Face-model folder {shown} does not exist. It is the folder with insightface's "
                ".onnx files: Hallo's pretrained_models/face_analysis/models, MEMO's "
                "misc/face_analysis/models. Nothing is downloaded."
            )
        folder = folder.resolve()
        # Same listing as insightface: glob *.onnx, sorted; the first model of each task is kept.
        files = [Path(p) for p in sorted(glob.glob(os.path.join(str(folder), "*.onnx")))]
        if not files:
            raise CheckpointError(
                f"Face-model folder {shown} holds no .onnx file; it needs a face detector "
                "(scrfd_10g_bnkps.onnx) and a face recognizer (glintr100.onnx)."
            )
        chosen: dict[str, Path] = {}
        for path in files:
            sig = _inspect(path, onnx)
            if sig.task is None or sig.task in chosen:
                continue
            if sig.task == "detection":
                _check_detector(path, sig)
            elif sig.task == "recognition":
                _check_recognizer(path, sig)
            chosen[sig.task] = path
        for task, what in (("detection", "face detector (scrfd_10g_bnkps.onnx: input [1, 3, H, W], "
                                         "9 outputs)"),
                           ("recognition", "face recognizer (glintr100.onnx: input [N, 3, 112, 112], "
                                           f"output [N, {EMBEDDING_DIM}])")):
            if task not in chosen:
                found = ", ".join(p.name for p in files)
                raise CheckpointError(f"Face-model folder {shown} has no {what}; found: {found}.")
        self.models_dir = folder
        self.detector_file = chosen["detection"]
        self.recognizer_file = chosen["recognition"]

        from insightface.app import FaceAnalysis

        # The originals' call: FaceAnalysis(name="", root=<folder above models/>) reads <root>/models/.
        name, root = ("", folder.parent) if folder.name == "models" else (str(folder), folder.parent)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # insightface 0.7.3 prints what it loads
                app = FaceAnalysis(name=name, root=str(root), providers=["CPUExecutionProvider"],
                                   allowed_modules=["detection", "recognition"])
                app.prepare(ctx_id=0, det_thresh=_DET_THRESH, det_size=DET_SIZE)
            if threads is not None:  # 0.7.3 passes onnxruntime no session options: same files, rebuilt
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = int(threads)
                options.inter_op_num_threads = 1
                for model in app.models.values():
                    model.session = onnxruntime.InferenceSession(
                        model.model_file, sess_options=options, providers=["CPUExecutionProvider"])
        except CheckpointError:
            raise
        except Exception as exc:
            bad = _first_failing_session(files, onnxruntime)
            where = display_path(bad) if bad is not None else f"a model in {shown}"
            raise CheckpointError(
                f"insightface could not load {where} ({type(exc).__name__}: {exc}); the file is "
                "corrupt or is not one of the originals' face models."
            ) from exc
        finally:
            for line in printed.getvalue().splitlines():
                log.debug("insightface: %s", line)
        loaded = {task: Path(m.model_file) for task, m in app.models.items()}
        if loaded.get("detection") != self.detector_file or loaded.get("recognition") != self.recognizer_file:
            raise CheckpointError(
                f"insightface picked other face models in {shown} than expected "
                f"({ {k: v.name for k, v in loaded.items()} }); please report this."
            )
        self._app = app

    def _models_named(self) -> str:
        return f"{display_path(self.detector_file)} / {display_path(self.recognizer_file)}"

    def embed(self, image: Image.Image) -> tuple[torch.Tensor, IdentityInfo]:
        """The identity embedding of the **original** photo (not the resized one), as Hallo and MEMO.

        Returns a float32 tensor of shape (512,): the raw recognizer output of the largest face,
        or zeros when no face is found (the originals' ``np.zeros(512)`` float64, cast). The
        originals use it as ``reshape(1, -1)``.
        """
        if not isinstance(image, Image.Image):
            raise InputError(f"embed() takes a PIL image, got {type(image).__name__}.")
        import cv2

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        bgr = cv2.cvtColor(np.array(rgb), cv2.COLOR_RGB2BGR)
        try:
            faces = self._app.get(bgr)
        except Exception as exc:
            raise CheckpointError(
                f"The face models {self._models_named()} failed on a {rgb.width}x{rgb.height} photo "
                f"({type(exc).__name__}: {exc}); they do not behave like SCRFD / ArcFace."
            ) from exc
        if not faces:
            info = IdentityInfo(False, 0, None, None,
                                "No face detected in the photo: the identity embedding is zeros, "
                                "as in Hallo and MEMO.")
            return torch.zeros(EMBEDDING_DIM, dtype=torch.float32), info
        ranked = sorted(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]),
                        reverse=True)
        face = ranked[0]
        emb = np.asarray(face["embedding"])
        if emb.shape != (EMBEDDING_DIM,) or not np.isfinite(emb).all():
            raise CheckpointError(
                f"The face recognizer {display_path(self.recognizer_file)} gave an embedding of shape "
                f"{list(emb.shape)}{'' if np.isfinite(emb).all() else ' with non-finite values'}; "
                f"Hallo and MEMO need {EMBEDDING_DIM} finite numbers."
            )
        bbox = tuple(float(v) for v in face["bbox"][:4])
        info = IdentityInfo(True, len(faces), bbox, float(face["det_score"]),
                            f"{len(faces)} face(s) detected; the largest "
                            f"({bbox[2] - bbox[0]:.0f}x{bbox[3] - bbox[1]:.0f} px) gives the identity.")
        return torch.from_numpy(emb.astype(np.float32, copy=True)), info
