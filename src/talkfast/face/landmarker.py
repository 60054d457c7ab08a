"""MediaPipe's FaceLandmarker, built the way Hallo builds it, read from the user's ``.task`` file.

Matched: fudan-generative-vision/hallo 8fd7c57, ``hallo/utils/util.py`` (``get_landmark`` and
``compute_face_landmarks``): a ``mediapipe.tasks.vision.FaceLandmarker`` created from
``FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=<task file>),
running_mode=IMAGE)`` and nothing else (so MediaPipe's defaults: one face, detection / presence /
tracking confidence 0.5, no blendshapes, no transformation matrices). Each normalised landmark
``(x, y)`` becomes the pixel coordinate ``(x * W, y * H)`` (float64, Python floats multiplied as
Hallo does). Hallo reads the model from
``pretrained_models/face_analysis/models/face_landmarker_v2_with_blendshapes.task``.

Hallo hands MediaPipe the image file itself (``mp.Image.create_from_file``: MediaPipe's own decoder,
RGBA for a PNG with alpha); :meth:`FaceLandmarker.landmarks_from_file` does the same, while
:meth:`FaceLandmarker.landmarks` takes decoded RGB pixels (e.g. PIL's ``image.convert("RGB")``:
identical for PNG, a few levels off for JPEG, see :meth:`FaceLandmarker.landmarks_from_file`).

MediaPipe is imported lazily; without it a :class:`~talkfast.errors.CheckpointError` names the pip
package. A missing, unreadable, truncated or foreign file (not a MediaPipe task bundle) raises a
:class:`~talkfast.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import atexit
import weakref
import zipfile
from pathlib import Path

import numpy as np

from talkfast.errors import CheckpointError, InputError

__all__ = ["FaceLandmarker", "HALLO_TASK_FILE", "TASK_MEMBERS"]

#: Where Hallo keeps the model, relative to its ``pretrained_models`` folder.
HALLO_TASK_FILE = "face_analysis/models/face_landmarker_v2_with_blendshapes.task"
#: The models a FaceLandmarker task bundle must contain (the blendshape model is optional: it is
#: only run when blendshapes are requested, which Hallo does not do).
TASK_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite")


def _check_task_file(path: Path) -> None:
    """Cheap checks before MediaPipe sees the file, so the usual mistakes get a clear message."""
    if not path.exists():
        raise CheckpointError(f"the MediaPipe face landmarker model {path} does not exist "
                              f"(Hallo keeps it at pretrained_models/{HALLO_TASK_FILE})")
    if not path.is_file():
        raise CheckpointError(f"the MediaPipe face landmarker model {path} is not a file")
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} is not a MediaPipe .task bundle (not a zip archive): "
                                  "the file is corrupt or something else")
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
    except CheckpointError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"cannot read the MediaPipe face landmarker model {path}: {err}") from err
    missing = [m for m in TASK_MEMBERS if m not in names]
    if missing:
        raise CheckpointError(f"{path} is not a MediaPipe face landmarker .task bundle: it lacks "
                              f"{', '.join(missing)} (it holds {', '.join(sorted(names)) or 'nothing'})")


def _import_mediapipe():
    try:
        import mediapipe as mp  # noqa: PLC0415 (heavy, optional)

        vision = mp.tasks.vision
        _ = (mp.tasks.BaseOptions, vision.FaceLandmarker, vision.FaceLandmarkerOptions, vision.RunningMode)
    except (ImportError, AttributeError) as err:
        raise CheckpointError("Hallo's face masks need MediaPipe's FaceLandmarker: install the pip package "
                              f"'mediapipe' (talkfast's 'prep' extra) ({err})") from err
    return mp


class FaceLandmarker:
    """MediaPipe FaceLandmarker in IMAGE mode with default options (one face), as Hallo creates it.

    ``task_path`` is the ``.task`` bundle (Hallo's ``face_landmarker_v2_with_blendshapes.task``).
    Use as a context manager or call :meth:`close` to release MediaPipe's graph.
    """

    def __init__(self, task_path) -> None:
        self.path = Path(task_path)
        _check_task_file(self.path)
        mp = _import_mediapipe()
        vision = mp.tasks.vision
        options = vision.FaceLandmarkerOptions(
            base_options=mp.tasks.BaseOptions(model_asset_path=str(self.path)),
            running_mode=vision.RunningMode.IMAGE,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as err:  # MediaPipe raises RuntimeError / ValueError / OSError for bad bundles
            raise CheckpointError(f"MediaPipe cannot load the face landmarker model {self.path}: {err}") from err
        self._mp = mp
        _OPEN.add(self)

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """Landmarks of the (single) face in an RGB ``uint8`` ``(H, W, 3)`` image.

        Returns a float64 array ``(N, 2)`` of pixel coordinates ``(x * W, y * H)`` (N = 478 for
        Google's model), or None when MediaPipe finds no face (Hallo raises an IndexError there).
        """
        if self._landmarker is None:
            raise RuntimeError("the face landmarker was closed")
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"the face landmarker needs an RGB uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(arr))
        return self._detect(image)

    def landmarks_from_file(self, path) -> np.ndarray | None:
        """Like :meth:`landmarks`, but MediaPipe decodes the image file itself
        (``mp.Image.create_from_file``), exactly as Hallo's ``get_landmark`` does.

        MediaPipe's JPEG decoder differs from PIL's by a few levels (measured: up to 3 on a
        quality-90 JPEG of scikit-image's astronaut, moving landmarks by up to 0.04 px); PNGs
        decode identically (RGBA included: the landmarks do not change).
        """
        if self._landmarker is None:
            raise RuntimeError("the face landmarker was closed")
        try:
            image = self._mp.Image.create_from_file(str(path))
        except Exception as err:  # noqa: BLE001 (MediaPipe: RuntimeError / ValueError)
            raise InputError(f"MediaPipe cannot read the image {path}: {err}") from err
        return self._detect(image)

    def _detect(self, image) -> np.ndarray | None:
        height, width = image.height, image.width
        faces = self._landmarker.detect(image).face_landmarks
        if len(faces) != 1:  # Hallo: "#face is invalid" -> [] -> IndexError further on
            return None
        return np.array([[p.x * width, p.y * height] for p in faces[0]], dtype=np.float64)

    def close(self) -> None:
        """Release MediaPipe's graph (also done at interpreter exit for every landmarker still
        open: MediaPipe's own finaliser fails once its C bindings are torn down)."""
        if getattr(self, "_landmarker", None) is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


_OPEN: "weakref.WeakSet[FaceLandmarker]" = weakref.WeakSet()


@atexit.register
def _close_open_landmarkers() -> None:
    for landmarker in list(_OPEN):
        landmarker.close()
