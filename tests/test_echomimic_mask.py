"""EchoMimic v1's FaceLocator mask and square crop (talkfast.face.masks.echomimic_*), hand-computed boxes.

``_echomimic`` restates what infer_audio2vid.py and util.crop_and_pad (antgroup/echomimic a53e970)
do with numpy slicing and 8-bit maps, wrap-around included, so the deviation is visible.
"""

import cv2
import numpy as np
import pytest
import torch

from talkfast.face.detect import Box, FaceRegions
from talkfast.face.masks import echomimic_crop_rect, echomimic_face_mask


def _echomimic(xyxy, w: int, h: int, size: int = 512) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    cb, rb, ce, re_ = (int(v) for v in np.round(np.asarray(xyxy, dtype=np.float64)))
    r_pad, c_pad = int((re_ - rb) * 0.1), int((ce - cb) * 0.1)
    mask[rb - r_pad : re_ + r_pad, cb - c_pad : ce + c_pad] = 255
    rc, cc = int((re_ - rb) * 0.5), int((ce - cb) * 0.5)
    x0, y0, x1, y1 = max(0, cb - cc), max(0, rb - rc), min(ce + cc, w), min(re_ + rc, h)
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    nx0, ny0 = max(0, cx - side // 2), max(0, cy - side // 2)
    nx1, ny1 = min(w, nx0 + side), min(h, ny0 + side)
    crop = mask[ny0:ny1, nx0:nx1]
    return cv2.resize(crop, (size, size)).astype(np.float32) / 255.0


def _hard(side: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    m = np.zeros((side, side), np.float32)
    m[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return m


def test_centred_face():
    # 1000 x 800 image, face (400, 300)-(600, 550): h 250 -> 25 rows, w 200 -> 20 columns of padding,
    # so rows 275..574 and columns 380..619. Crop: dilate by 125 rows / 100 columns -> x 300..700,
    # y 175..675; side min(400, 500) = 400 about (500, 425) -> (300, 225, 700, 625).
    box = Box(400, 300, 600, 550)
    assert echomimic_crop_rect(box, (1000, 800)) == (300, 225, 700, 625)
    exact = echomimic_face_mask(box, (1000, 800), size=400)  # no resize: the hard rectangle
    assert exact.shape == (1, 400, 400) and exact.dtype == torch.float32
    np.testing.assert_array_equal(exact[0].numpy(), _hard(400, (50, 350), (80, 320)))
    soft = echomimic_face_mask(box, (1000, 800))
    assert soft.shape == (1, 512, 512)
    expected = cv2.resize(_hard(400, (50, 350), (80, 320)), (512, 512), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(soft[0].numpy(), expected, rtol=0, atol=1e-6)
    edge = soft[0].numpy()
    assert ((edge > 0.01) & (edge < 0.99)).any() and edge[200, 256] == 1.0 and edge[10, 10] == 0.0
    as_8bit = echomimic_face_mask(box, (1000, 800), uint8=True)
    np.testing.assert_array_equal(as_8bit[0].numpy(), _echomimic((400, 300, 600, 550), 1000, 800))
    assert float((as_8bit - soft).abs().max()) <= 1.0 / 255.0
    regions = FaceRegions(face=box, lip=Box(450, 480, 550, 520), image_size=(1000, 800), detected=True, method="test")
    assert torch.equal(echomimic_face_mask(regions, (1000, 800)), soft)


def test_fractional_box_rounds_half_to_even_and_crop_clips():
    # np.round: (100.5, 50.5, 301.5, 300.4) -> (100, 50, 302, 300); h 250 -> 25, w 202 -> 20.
    # Mask rows 25..324, columns 80..321. Crop: 125 rows / 101 columns -> x 0..403, y 0..425;
    # side 403 about (201, 212) -> (0, 11, 403, 414); in the crop rows 14..313, columns 80..321.
    xyxy = (100.5, 50.5, 301.5, 300.4)
    assert echomimic_crop_rect(xyxy, (640, 480)) == (0, 11, 403, 414)
    exact = echomimic_face_mask(xyxy, (640, 480), size=403)
    np.testing.assert_array_equal(exact[0].numpy(), _hard(403, (14, 314), (80, 322)))
    np.testing.assert_array_equal(echomimic_face_mask(xyxy, (640, 480), uint8=True)[0].numpy(), _echomimic(xyxy, 640, 480))


def test_face_at_top_left_edge_is_clipped_not_wrapped():
    # 512 x 512, face (5, 8)-(205, 258): padded start row 8 - 25 = -17 and column 5 - 20 = -15.
    # EchoMimic's slice mask[-17:283, -15:225] starts near the bottom/right and is empty.
    assert _echomimic((5, 8, 205, 258), 512, 512, size=305).max() == 0.0
    # Crop: x 0..305, y 0..383; side 305 about (152, 191) -> (0, 39, 305, 344).
    assert echomimic_crop_rect((5, 8, 205, 258), (512, 512)) == (0, 39, 305, 344)
    mask = echomimic_face_mask((5, 8, 205, 258), (512, 512), size=305)
    np.testing.assert_array_equal(mask[0].numpy(), _hard(305, (0, 283 - 39), (0, 225)))


def test_no_face_is_all_ones_at_the_model_size():
    none = echomimic_face_mask(None, (1000, 800))
    assert none.shape == (1, 512, 512) and bool((none == 1.0).all())
    regions = FaceRegions(face=Box(100, 100, 400, 500), lip=Box(200, 400, 300, 450), image_size=(1000, 800),
                          detected=False, method="none+prior")
    assert torch.equal(echomimic_face_mask(regions, (1000, 800)), none)
    assert echomimic_face_mask(None, (10, 10), size=(320, 256)).shape == (1, 256, 320)
    assert echomimic_crop_rect(None, (1000, 800)) is None and echomimic_crop_rect(regions, (1000, 800)) is None


def test_bad_inputs():
    with pytest.raises(ValueError):
        echomimic_face_mask((10, 10, 5, 20), (100, 100))
    with pytest.raises(ValueError):
        echomimic_face_mask((10, 10, 50, 60), (100, 100), size=0)
    with pytest.raises(ValueError, match="empty crop"):
        echomimic_face_mask((10, 10, 10, 60), (100, 100))
