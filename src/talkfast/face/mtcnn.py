"""MTCNN face detection as EchoMimic v1 runs it, on facenet-pytorch's bundled weights.

What EchoMimic does (antgroup/echomimic a53e97040398ddae5d26df0d2054a8f1e9f9df6d,
``infer_audio2vid.py`` and ``infer_audio2vid_acc.py``: ``MTCNN(image_size=320, margin=0,
min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709, post_process=True, device=device)``,
``face_detector.detect(cv2.imread(path))``, ``select_face``):

* the detector is facenet-pytorch 2.5.0's ``MTCNN`` (EchoMimic's pin) with the P/R/O-Net weights
  shipped inside the package (``facenet_pytorch/data/{pnet,rnet,onet}.pt``);
* it is fed the **BGR** uint8 array of ``cv2.imread`` (not RGB);
* ``detect`` returns the boxes sorted by area (largest first) and their probabilities;
* ``select_face`` keeps the boxes with probability ``> 0.8`` and takes the one with the largest
  area (Python's stable ``sorted(..., reverse=True)``); the caller rounds it with ``np.round``.

``image_size``, ``margin`` and ``post_process`` only matter for facenet's face *extraction*, which
EchoMimic never calls; ``detect`` depends on ``min_face_size``, ``thresholds`` and ``factor`` only.

The networks and the detection cascade are re-implemented here (read from timesler/facenet-pytorch
v2.5.0, ``models/mtcnn.py`` and ``models/utils/detect_face.py``): the same torch operations in the
same order (area resampling of the scale pyramid, ``(x - 127.5) * 0.0078125``, ``generateBoundingBox``,
per-scale NMS 0.5, per-image NMS 0.7, ``rerec``/``pad``/``bbreg``, R-Net and O-Net on 24^2 / 48^2
area-resampled crops, and the final numpy NMS with the "Min" overlap). facenet calls
``torchvision.ops.batched_nms``; torchvision cannot be installed beside the CPU torch wheel here, so
:func:`nms` re-implements torchvision's CPU kernel (stable descending sort by score, float32 IoU,
suppress where IoU > threshold) and :func:`batched_nms` its two strategies.

Differences from EchoMimic: EchoMimic runs the detector on its ``--device`` (CUDA); on another
device convolution and resampling round differently, so boxes may differ in the last float32 bits.
The tests compare against facenet's own ``MTCNN.detect`` on CPU.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkfast.errors import CheckpointError, InputError

__all__ = [
    "MTCNN", "PNet", "RNet", "ONet", "nms", "batched_nms", "facenet_weights_dir", "load_mtcnn",
    "echomimic_select_face", "echomimic_face_box", "ECHOMIMIC_MTCNN",
]

#: EchoMimic's MTCNN arguments (infer_audio2vid.py at a53e970); only the last three matter for detect.
ECHOMIMIC_MTCNN = {"image_size": 320, "margin": 0, "post_process": True,
                   "min_face_size": 20, "thresholds": (0.6, 0.7, 0.7), "factor": 0.709}
ECHOMIMIC_MIN_PROB = 0.8  # select_face: probs[i] > 0.8


# ----------------------------------------------------------------------------------------------
# NMS (torchvision.ops.nms / batched_nms, CPU kernel)
# ----------------------------------------------------------------------------------------------


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64, by decreasing score) of the boxes ``(N, 4)`` ``(x1, y1, x2, y2)`` kept by greedy
    NMS, as torchvision's CPU kernel: boxes visited in a *stable* descending sort of ``scores``; a box
    is dropped when its IoU with a kept box is ``> iou_threshold``. Areas and IoU are computed in the
    boxes' dtype, ``inter / (area_i + area_j - inter)`` with ``area = (x2 - x1) * (y2 - y1)``."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    b = boxes.detach().cpu()
    s = scores.detach().cpu()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(s, dim=0, descending=True, stable=True).indices
    suppressed = torch.zeros(b.shape[0], dtype=torch.bool)
    keep = []
    for pos in range(order.numel()):
        i = int(order[pos])
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp_min(0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp_min(0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs``, as ``torchvision.ops.batched_nms``: up to 4000 box
    coordinates on CPU the boxes are offset by ``idx * (max coordinate + 1)`` and one :func:`nms`
    runs; above that, one :func:`nms` per category and the kept indices sorted by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for c in torch.unique(idxs):
            where = torch.where(idxs == c)[0]
            keep_mask[where[nms(boxes[where], scores[where], iou_threshold)]] = True
        kept = torch.where(keep_mask)[0]
        return kept[scores[kept].sort(descending=True, stable=True).indices]
    top = boxes.max()
    offsets = idxs.to(boxes) * (top + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _nms_min_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet's last-stage numpy NMS with the "Min" overlap: ``inter / min(area_i, area_j)`` with
    ``+1`` pixel areas, boxes visited by ``np.argsort(scores)`` from the end (numpy's default sort),
    kept while the overlap is ``<= threshold``."""
    if boxes.size == 0:
        return np.empty((0,), dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    picked = []
    while order.size > 0:
        i = order[-1]
        picked.append(i)
        others = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[others]) - np.maximum(x1[i], x1[others]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[others]) - np.maximum(y1[i], y1[others]) + 1)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[others])
        order = order[np.where(overlap <= threshold)]
    return np.asarray(picked, dtype=np.int16).astype(np.int64)


def _batched_nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    shifted = (boxes + offsets[:, None]).cpu().numpy()
    keep = _nms_min_numpy(shifted, scores.cpu().numpy(), threshold)
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


# ----------------------------------------------------------------------------------------------
# The three networks (parameter names as in facenet-pytorch's pnet.pt / rnet.pt / onet.pt)
# ----------------------------------------------------------------------------------------------


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12 x 12 receptive field. ``forward -> (reg (N,4,h,w), prob (N,2,h,w))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


def _flatten_wh(x: torch.Tensor) -> torch.Tensor:
    # the Caffe/TF weights expect (N, W, H, C) order before the dense layer
    return x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24 x 24 crops. ``forward -> (reg (N,4), prob (N,2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48 x 48 crops. ``forward -> (reg (N,4), landmarks (N,10), prob (N,2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def facenet_weights_dir() -> Path:
    """``facenet_pytorch/data`` of the installed facenet-pytorch, found without importing the package
    (its ``__init__`` needs torchvision). :class:`CheckpointError` naming the package when it is missing."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("EchoMimic's face detector needs the MTCNN weights of the facenet-pytorch package: "
                              "pip install --no-deps facenet-pytorch==2.5.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_net(net: nn.Module, path: Path) -> nn.Module:
    if not path.is_file():
        raise CheckpointError(f"MTCNN weights {path} are missing (reinstall facenet-pytorch==2.5.0)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # unpickling / key / shape errors come in many types
        raise CheckpointError(f"could not load the MTCNN weights {path}: {exc}") from exc
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# The detection cascade (facenet-pytorch detect_face, one image)
# ----------------------------------------------------------------------------------------------


def _resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(img, size=size, mode="area")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _proposals(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float):
    """facenet's generateBoundingBox: the 12 px cells of the P-Net map with ``prob >= threshold``."""
    reg = reg.permute(1, 0, 2, 3)
    mask = prob >= threshold
    where = mask.nonzero()
    score = prob[mask]
    reg = reg[:, mask].permute(1, 0)
    xy = where[:, 1:].type(reg.dtype).flip(1)
    q1 = ((2 * xy + 1) / scale).floor()
    q2 = ((2 * xy + 12 - 1 + 1) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), where[:, 0]


def _square(b: torch.Tensor) -> torch.Tensor:
    """facenet's rerec: the square of side max(w, h) on the box centre (columns 0-3 replaced)."""
    b = b.clone()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = torch.max(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2:4] = b[:, :2] + side.repeat(2, 1).permute(1, 0)
    return b


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """facenet's bbreg: the box moved by ``reg`` times its ``+1`` pixel width/height."""
    b = b.clone()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, :4] = torch.stack([b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h,
                            b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h]).permute(1, 0)
    return b


def _crops(img: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor, w: int, h: int, side: int) -> torch.Tensor:
    """facenet's pad + crop loop: each box truncated to int, its start clamped to >= 1 and its end
    to the image, cut as ``[y - 1 : ey, x - 1 : ex]`` and area-resampled to ``side`` squared."""
    t = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    x[x < 1], y[y < 1] = 1, 1
    ex[ex > w], ey[ey > h] = w, h
    out = []
    for k in range(len(y)):
        if ey[k] > y[k] - 1 and ex[k] > x[k] - 1:
            # indexed by the image's index tensor as facenet does: the copy's memory layout decides
            # the summation order of the area resampling
            out.append(_resample(img[inds[k], :, y[k] - 1:ey[k], x[k] - 1:ex[k]].unsqueeze(0), (side, side)))
        else:  # facenet skips the crop and then mis-aligns boxes and scores; such a box cannot be a face
            raise _OutsideBox()
    return _normalise(torch.cat(out, dim=0))


class _OutsideBox(Exception):
    pass


def _batched(net: nn.Module, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, ...]:
    parts = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
    return tuple(torch.cat(v, dim=0) for v in zip(*parts))


class MTCNN:
    """facenet-pytorch 2.5.0's MTCNN detector (``detect`` only) on its bundled weights.

    ``MTCNN(min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709, device="cpu", weights_dir=None)``;
    ``weights_dir`` defaults to :func:`facenet_weights_dir`.
    """

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709,
                 device="cpu", weights_dir: str | Path | None = None) -> None:
        folder = Path(weights_dir) if weights_dir is not None else facenet_weights_dir()
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        self.device = torch.device(device)
        self.pnet = _load_net(PNet(), folder / "pnet.pt").to(self.device)
        self.rnet = _load_net(RNet(), folder / "rnet.pt").to(self.device)
        self.onet = _load_net(ONet(), folder / "onet.pt").to(self.device)

    @torch.no_grad()
    def detect_all(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All faces of one uint8 ``(H, W, 3)`` array (channels as given; EchoMimic gives BGR):
        ``(boxes (n, 4) float32 x1 y1 x2 y2, probs (n,) float32)`` in facenet's final NMS order."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"MTCNN needs an (H, W, 3) image, got shape {arr.shape}")
        img = torch.as_tensor(arr.copy(), device=self.device).unsqueeze(0)
        img = img.permute(0, 3, 1, 2).type(self.pnet.conv1.weight.dtype)
        h, w = img.shape[2:4]
        empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scales, s = [], m
        while minl >= 12:
            scales.append(s)
            s *= self.factor
            minl *= self.factor
        th = self.thresholds
        # stage 1: P-Net on the pyramid, NMS 0.5 per scale, then 0.7 over all scales
        found, inds, picks, offset = [], [], [], 0
        for scale in scales:
            x = _normalise(_resample(img, (int(h * scale + 1), int(w * scale + 1))))
            reg, prob = self.pnet(x)
            b, i = _proposals(reg, prob[:, 1], scale, th[0])
            found.append(b)
            inds.append(i)
            picks.append(batched_nms(b[:, :4], b[:, 4], i, 0.5) + offset)
            offset += b.shape[0]
        if not scales:
            return empty
        boxes, image_inds = torch.cat(found)[torch.cat(picks)], torch.cat(inds)[torch.cat(picks)]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        rw, rh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * rw, boxes[:, 1] + boxes[:, 6] * rh,
                             boxes[:, 2] + boxes[:, 7] * rw, boxes[:, 3] + boxes[:, 8] * rh,
                             boxes[:, 4]]).permute(1, 0)
        boxes = _square(boxes)
        try:
            # stage 2: R-Net on 24 x 24 crops
            if len(boxes) > 0:
                reg, prob = _batched(self.rnet, _crops(img, boxes, image_inds, w, h, 24))
                score = prob[:, 1]
                ok = score > th[1]
                boxes = torch.cat((boxes[ok, :4], score[ok].unsqueeze(1)), dim=1)
                image_inds, reg = image_inds[ok], reg[ok]
                pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
                boxes, image_inds, reg = boxes[pick], image_inds[pick], reg[pick]
                boxes = _square(_regress(boxes, reg))
            # stage 3: O-Net on 48 x 48 crops, "Min" NMS 0.7
            if len(boxes) > 0:
                reg, _marks, prob = _batched(self.onet, _crops(img, boxes, image_inds, w, h, 48))
                score = prob[:, 1]
                ok = score > th[2]
                boxes = torch.cat((boxes[ok, :4], score[ok].unsqueeze(1)), dim=1)
                image_inds, reg = image_inds[ok], reg[ok]
                boxes = _regress(boxes, reg)
                pick = _batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
                boxes = boxes[pick]
        except _OutsideBox:
            return empty
        out = boxes.cpu().numpy()
        return out[:, :4].astype(np.float32), out[:, 4].astype(np.float32)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | list]:
        """As facenet's ``MTCNN.detect(img)`` with ``select_largest=True``: ``(boxes (n, 4), probs (n,))``
        sorted by decreasing box area (``np.argsort(area)[::-1]``), or ``(None, [None])`` without a face."""
        boxes, probs = self.detect_all(image)
        if len(boxes) == 0:
            return None, [None]
        order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
        return boxes[order], probs[order]


@lru_cache(maxsize=4)
def _cached(device: str) -> MTCNN:
    return MTCNN(ECHOMIMIC_MTCNN["min_face_size"], ECHOMIMIC_MTCNN["thresholds"], ECHOMIMIC_MTCNN["factor"],
                 device=device)


def load_mtcnn(device="cpu") -> MTCNN:
    """EchoMimic's detector (``min_face_size`` 20, thresholds 0.6/0.7/0.7, factor 0.709), cached per device."""
    return _cached(str(torch.device(device)))


def echomimic_select_face(boxes, probs, min_prob: float = ECHOMIMIC_MIN_PROB):
    """EchoMimic's ``select_face``: of the boxes with ``prob > min_prob``, the one with the largest
    area ``(y2 - y1) * (x2 - x1)`` (first in ``boxes`` order on ties), or None."""
    if boxes is None or probs is None:
        return None
    kept = [boxes[i] for i in range(len(boxes)) if probs[i] > min_prob]
    if not kept:
        return None
    return sorted(kept, key=lambda b: (b[3] - b[1]) * (b[2] - b[0]), reverse=True)[0]


def echomimic_face_box(bgr: np.ndarray, detector: MTCNN | None = None) -> tuple[int, int, int, int] | None:
    """The face box ``(x0, y0, x1, y1)`` EchoMimic uses for a ``cv2.imread`` (BGR uint8) image:
    :meth:`MTCNN.detect`, :func:`echomimic_select_face`, ``np.round(xyxy).astype(int)``; None without a face."""
    det = detector if detector is not None else load_mtcnn()
    boxes, probs = det.detect(bgr)
    box = echomimic_select_face(boxes, probs)
    if box is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box[:4])).astype(int))
    return x0, y0, x1, y1
