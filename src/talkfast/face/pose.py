"""EchoMimic's pose input: per-frame face-mesh drawings for the pose variants' FaceLocator.

EchoMimic's pose scripts (antgroup/echomimic at a53e970, ``infer_audio2vid_pose*.py`` with
``src/utils/draw_utils.py``) read one landmark file per video frame (``0.pkl``, ``1.pkl``, ...: an
array of MediaPipe face-mesh points in pixels of the 512x512 frame, as ``demo_motion_sync.py``
writes them) and draw each with ``FaceMeshVisualizer(draw_iris=False, draw_mouse=False)``:

* on a black 512x512 RGB canvas, lines 2 px thick (``cv2.line``) along MediaPipe's eye and eyebrow
  connections (``mediapipe/python/solutions/face_mesh_connections.py``), in this order and these
  colours: left eye (180, 200, 10), right eye (10, 200, 180), left eyebrow (180, 220, 10), right
  eyebrow (10, 220, 180); a point takes part when its normalised coordinates lie in [0, 1]
  (MediaPipe's ``_normalized_to_pixel_coordinates``: ``min(floor(x * 512), 511)``);
* then 6x6 squares (``image[y-3:y+3, x-3:x+3]``, numpy slicing as written there) at the pupils,
  point 468 in (10, 200, 250) and point 473 in (250, 200, 10), and at the nose tip, point 4, in
  (200, 200, 200), for points with 0 <= x, y < 1 (``int(512 * x)``);
* the mouth is not drawn (the audio drives the lips), nor the face oval or the irises;
* the drawing is resized to the model size (``cv2.resize``, bilinear) and divided by 255.

:func:`draw_face_pose` is that drawing; :class:`PoseSequence` reads a pose input for the pipeline:
a folder of EchoMimic's ``N.pkl`` files (or ``N.npy``; the ``.pkl`` files are read with an
unpickler that accepts numpy arrays of numbers only, never arbitrary objects, and checks the shape
and dtype each file declares, at most :data:`MAX_POSE_VALUES` numbers, before numpy allocates
them: :func:`read_landmarks`), a folder of already drawn
``N.png``/``N.jpg`` frames, or a video of drawn frames. Frames are drawn or read a chunk at a time.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import InputError

CANVAS = 512  # FaceMeshVisualizer.draw_landmarks draws on 512 x 512, then resizes
LINE_THICKNESS = 2
POINT_HALFWIDTH = 3

# MediaPipe face-mesh connections (mediapipe/python/solutions/face_mesh_connections.py)
LEFT_EYE = ((263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382), (382, 362),
            (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384), (384, 398), (398, 362))
RIGHT_EYE = ((33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
             (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173), (173, 133))
LEFT_EYEBROW = ((276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296), (296, 336))
RIGHT_EYEBROW = ((46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107))

# (connections, RGB colour) in drawing order; points (index, colour) drawn after the lines
LINES = ((LEFT_EYE, (180, 200, 10)), (RIGHT_EYE, (10, 200, 180)),
         (LEFT_EYEBROW, (180, 220, 10)), (RIGHT_EYEBROW, (10, 220, 180)))
POINTS = ((468, (10, 200, 250)), (473, (250, 200, 10)), (4, (200, 200, 200)))
MIN_POINTS = 1 + max(i for lines, _ in LINES for edge in lines for i in edge)

LANDMARK_SUFFIXES = (".pkl", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _pixel(x: float, y: float) -> tuple[int, int] | None:
    """MediaPipe's normalised -> pixel mapping on the canvas, None outside [0, 1]."""
    def inside(v: float) -> bool:
        return (v > 0 or math.isclose(0, v)) and (v < 1 or math.isclose(1, v))

    if not (inside(x) and inside(y)):
        return None
    return min(math.floor(x * CANVAS), CANVAS - 1), min(math.floor(y * CANVAS), CANVAS - 1)


def draw_face_pose(keypoints, size: int = CANVAS, image_size: tuple[int, int] = (CANVAS, CANVAS)) -> np.ndarray:
    """EchoMimic's drawing of one frame's face-mesh points (N >= 399, x/y in pixels of an image of
    ``image_size`` (W, H), EchoMimic's 512 x 512), resized to ``size``: uint8 (size, size, 3) RGB."""
    pts = np.asarray(keypoints, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2 or not np.isfinite(pts[:, :2]).all():
        raise InputError(f"pose landmarks must be an (N, 2 or 3) array of finite pixel coordinates, got shape {pts.shape}")
    if pts.shape[0] < MIN_POINTS:
        raise InputError(f"pose landmarks need the MediaPipe face mesh ({MIN_POINTS}+ points), got {pts.shape[0]}")
    x, y = pts[:, 0] / image_size[0], pts[:, 1] / image_size[1]
    image = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    for lines, colour in LINES:
        for a, b in lines:
            pa, pb = _pixel(x[a], y[a]), _pixel(x[b], y[b])
            if pa is not None and pb is not None:
                cv2.line(image, pa, pb, colour, LINE_THICKNESS)
    h = POINT_HALFWIDTH
    for index, colour in POINTS:
        if index >= len(x) or not (0 <= x[index] < 1 and 0 <= y[index] < 1):
            continue
        px, py = int(CANVAS * x[index]), int(CANVAS * y[index])
        image[py - h : py + h, px - h : px + h, :] = colour
    if size != CANVAS:
        image = cv2.resize(image, (size, size))
    return image


# What one frame's landmark file may declare, checked before anything is allocated: a frame needs
# MediaPipe's face mesh (468 points, 478 with the irises) of 2 or 3 coordinates; the bounds are
# generous (20x the points, a 4th coordinate) and still keep a hostile file to a few hundred KB.
MAX_POSE_POINTS = 10_000
MAX_POSE_COORDS = 4
MAX_POSE_VALUES = MAX_POSE_POINTS * MAX_POSE_COORDS
MAX_POSE_NDIM = 3
MAX_POSE_FILE_BYTES = 4 * 2**20  # a 478 x 3 float64 frame is 11 KB
_POSE_KINDS = "biuf"  # bool, integer, unsigned, floating point: what becomes float64 coordinates


def _check_declared(shape, dtype, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """``shape`` and ``dtype`` as a pose file declares them, checked against what one frame needs
    (at most :data:`MAX_POSE_VALUES` numbers, :data:`MAX_POSE_NDIM` axes) before an array is made."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise pickle.UnpicklingError(f"{what} declares an unusable dtype ({err})") from None
    if dt.kind not in _POSE_KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None \
            or not 1 <= dt.itemsize <= 16:
        raise pickle.UnpicklingError(f"{what} declares dtype {dt.str!r}; landmarks are numbers (bool, int or float)")
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                               for n in shape):
        raise pickle.UnpicklingError(f"{what} declares a shape that is not a tuple of whole numbers")
    shape = tuple(int(n) for n in shape)
    if len(shape) > MAX_POSE_NDIM or any(not 0 <= n <= MAX_POSE_VALUES for n in shape) \
            or math.prod(shape) > MAX_POSE_VALUES:
        raise pickle.UnpicklingError(
            f"{what} declares an array of shape {shape if len(shape) <= 8 else shape[:8] + ('...',)}; one frame's "
            f"landmarks are at most {MAX_POSE_POINTS} points x {MAX_POSE_COORDS} coordinates")
    return shape, dt


class _CheckedArray(np.ndarray):
    """The array a pose pickle rebuilds: its state (shape, dtype, raw bytes) is checked before numpy
    takes it (``ndarray.__setstate__`` would otherwise allocate whatever the stream declares)."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("a pose file's array has a malformed state")
        shape, dtype, _fortran, raw = state[-4:]
        shape, dt = _check_declared(shape, dtype, "a pose file's array")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape) * dt.itemsize:
            raise pickle.UnpicklingError(f"a pose file's array of shape {shape} and dtype {dt.str!r} holds "
                                         f"{len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__} "
                                         "bytes of data, not its size")
        super().__setstate__(state)


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` with the declared shape and dtype checked first (it allocates them)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("a pose file may hold plain numpy arrays only")
    shape, dt = _check_declared(shape, dtype, "a pose file's array")
    return np.ndarray.__new__(_CheckedArray, shape, dt)


def _dtype(*args):
    dt = np.dtype(*args)
    _check_declared((), dt, "a pose file's dtype")
    return dt


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of numbers (and plain lists/numbers) only: a pose file never runs
    code, and every array's declared shape and dtype are checked (:func:`_check_declared`) before
    numpy allocates it."""

    CHECKED = {("numpy.core.multiarray", "_reconstruct"): "reconstruct",
               ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
               ("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype",
               ("numpy.core.multiarray", "scalar"): "scalar", ("numpy._core.multiarray", "scalar"): "scalar"}

    def find_class(self, module: str, name: str):
        kind = self.CHECKED.get((module, name))
        if kind == "reconstruct":
            return _reconstruct
        if kind == "ndarray":
            return np.ndarray
        if kind == "dtype":
            return _dtype
        if kind == "scalar":
            real = super().find_class(module, name)

            def scalar(dtype, *args):
                _check_declared((), dtype, "a pose file's number")
                return real(dtype, *args)
            return scalar
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a pose file may hold a numpy array only")


def _count_values(obj, limit: int) -> int:
    """The numbers a loaded pose object holds (arrays, nested lists/tuples of numbers), stopping
    past ``limit`` (a list may repeat one array many times: counted by reference, never expanded)."""
    total, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            total += item.size
        elif isinstance(item, (list, tuple)):
            total += len(item) == 0
            stack.extend(item)
        else:
            total += 1
        if total > limit:
            raise pickle.UnpicklingError(f"holds more than {limit} numbers; one frame's landmarks are at most "
                                         f"{MAX_POSE_POINTS} points x {MAX_POSE_COORDS} coordinates")
    return total


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file whose header (shape, dtype) is checked before its data are read."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        version = npy.read_magic(f)
        readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
        if version not in readers:  # 3.0 only differs for utf-8 field names, which landmarks have none of
            raise ValueError(f".npy format version {version[0]}.{version[1]}; landmarks are written as 1.0 or 2.0")
        shape, fortran, dtype = readers[version](f)
        try:
            shape, dt = _check_declared(shape, dtype, "the .npy header")
        except pickle.UnpicklingError as err:
            raise ValueError(str(err)) from None
        nbytes = math.prod(shape) * dt.itemsize
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise ValueError(f"the .npy header declares {nbytes} bytes of data, the file holds {len(data)}")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=dt).reshape(shape, order=order).copy()


def read_landmarks(path: Path) -> np.ndarray:
    """One frame's landmarks from an EchoMimic ``.pkl`` (numpy arrays of numbers only) or a ``.npy``
    file. The file's size, and the shape and dtype it declares, are checked against what one frame
    needs (:data:`MAX_POSE_VALUES` numbers) before anything is allocated."""
    try:
        size = path.stat().st_size
        if size > MAX_POSE_FILE_BYTES:
            raise ValueError(f"the file is {size} bytes; one frame's landmarks take at most {MAX_POSE_FILE_BYTES}")
        if path.suffix == ".npy":
            return _read_npy(path)
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes())).load()
        _count_values(obj, MAX_POSE_VALUES)
        return np.asarray(obj, dtype=np.float64)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, RecursionError, MemoryError) as err:
        raise InputError(f"cannot read pose landmarks from {path}: {err}") from err


def _numbered(folder: Path) -> list[Path]:
    """The files ``0.ext``, ``1.ext``, ... of a pose folder (one kind of file), checked to be complete."""
    files: dict[int, Path] = {}
    for p in folder.iterdir():
        m = re.fullmatch(r"(\d+)(\.[A-Za-z]+)", p.name)
        if m and m.group(2).lower() in LANDMARK_SUFFIXES + IMAGE_SUFFIXES:
            files[int(m.group(1))] = p
    if not files:
        raise InputError(f"pose folder {folder} has no frames: expected 0.pkl, 1.pkl, ... (EchoMimic's landmarks), "
                         ".npy landmarks, or drawn 0.png, 1.png, ...")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise InputError(f"pose folder {folder} misses frame(s) {missing[:5]} (frames must be numbered from 0 on)")
    kinds = {files[i].suffix.lower() in LANDMARK_SUFFIXES for i in files}
    if len(kinds) > 1:
        raise InputError(f"pose folder {folder} mixes landmark files and drawn images")
    return [files[i] for i in range(len(files))]


class PoseSequence:
    """The pose drawings of a video, ``len()`` frames, read ``frames(start, count)`` at a time as a
    float tensor (count, 3, size, size) in [0, 1] (EchoMimic: the drawing / 255)."""

    def __init__(self, source: str | Path, size: int):
        self.path, self.size = Path(source).expanduser(), int(size)
        if self.path.is_dir():
            self.files = _numbered(self.path)
            self.count = len(self.files)
        elif self.path.is_file():
            from ..io.video import probe_video

            try:
                self.count = probe_video(self.path).num_frames
            except Exception as err:  # not a video
                raise InputError(f"cannot read the pose video {self.path}: {err}") from err
            self.files = None
        else:
            raise InputError(f"pose input {self.path} does not exist (a folder of per-frame files or a video)")
        if self.count < 1:
            raise InputError(f"pose input {self.path} has no frames")

    def __len__(self) -> int:
        return self.count

    def _image(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        rgb = rgb[..., :3]
        return rgb if rgb.shape[:2] == (self.size, self.size) else cv2.resize(rgb, (self.size, self.size))

    def _frame(self, i: int) -> np.ndarray:
        p = self.files[i]
        if p.suffix.lower() in LANDMARK_SUFFIXES:
            return draw_face_pose(read_landmarks(p), self.size)
        from PIL import Image

        try:
            with Image.open(p) as im:
                return self._image(np.asarray(im.convert("RGB")))
        except OSError as err:
            raise InputError(f"cannot read the pose image {p}: {err}") from err

    def frames(self, start: int, count: int) -> torch.Tensor:
        if not (0 <= start and start + count <= self.count):
            raise InputError(f"pose frames {start}..{start + count - 1} asked of {self.count}")
        if self.files is not None:
            out = [self._frame(i) for i in range(start, start + count)]
        else:
            out = self._video_frames(start, count)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0

    def _video_frames(self, start: int, count: int) -> list[np.ndarray]:
        """Frames ``start`` .. ``start + count - 1`` of the video, decoded from its start (a chunk
        is at most the pipeline's chunk length, so a long video is read a few times, never held)."""
        import imageio.v2 as imageio

        out = []
        with imageio.get_reader(str(self.path)) as reader:
            for i, frame in enumerate(reader):
                if i >= start + count:
                    break
                if i >= start:
                    out.append(self._image(np.asarray(frame)))
        if len(out) < count:
            raise InputError(f"the pose video {self.path} ended after {start + len(out)} frames")
        return out
