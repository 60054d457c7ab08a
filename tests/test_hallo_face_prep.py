"""Hallo's face preparation (talkfast.face.hallo_prep, talkfast.face.landmarker).

Pinned against fudan-generative-vision/hallo 8fd7c57 (hallo/utils/util.py get_mask & co,
hallo/datasets/image_processor.py ImageProcessor.preprocess):
- boxes: hand-computed from landmark arrays (np.round half-to-even, float floor division, shift
  back inside the image);
- masks / FaceLocator input / pixels: re-computed here step by step with cv2 / PIL / numpy as
  Hallo's code does, through real PNG files in tmp_path, compared exactly (uint8 equality, float
  tensors with torch.equal: the same libraries on the same 8-bit data give the same bits);
- the real MediaPipe model (Google's face_landmarker.task, md5 b0e7274907a1644404fef66b28dd6d85) on
  scikit-image photos, skipped when <repo>/.cache/test-models/face_landmarker.task is absent.
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from talkfast.errors import CheckpointError, InputError
from talkfast.face.detect import Box, FaceRegions
from talkfast.face.hallo_prep import (
    LIP_IDS, SILHOUETTE_IDS, HalloBoxes, expand_region, hallo_boxes, hallo_boxes_from_regions,
    hallo_face_boxes, hallo_face_prep, hallo_hard_masks, hallo_level_sizes,
)
from talkfast.face.landmarker import FaceLandmarker
from talkfast.face.masks import MaskSet

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / ".cache" / "test-models" / "face_landmarker.task"
needs_task = pytest.mark.skipif(not TASK.is_file(), reason=f"{TASK} (Google's face_landmarker.task) is absent")


def _landmarks(face_pts: dict[int, tuple[float, float]], lip_pts: dict[int, tuple[float, float]],
               face_fill=(150.0, 120.0), lip_fill=(150.0, 156.0)) -> np.ndarray:
    """A 478-point array: silhouette points at face_fill, lip points at lip_fill, a few set by hand."""
    pts = np.full((478, 2), 150.0)
    pts[list(SILHOUETTE_IDS)] = face_fill
    pts[list(LIP_IDS)] = lip_fill
    for i, p in {**face_pts, **lip_pts}.items():
        pts[i] = p
    return pts


# ------------------------------------------------------------------------------------------ boxes


def test_boxes_from_landmarks_hand_computed():
    # face: x 100.5..200.4 -> np.round 100 (half to even; half-up would give 101) .. 200;
    #       y 50.5..180.6 -> 50 (even) .. 181.
    #   mid_x = 300 // 2 = 150, half side = (100 * 1.2) // 2 = 60 -> 90..210
    #   mid_y = 231 // 2 = 115 (floor of 115.5), half side = (131 * 1.2 = 157.2) // 2 = 78 -> 37..193
    #   (with half-up rounding: x 91..209, y 38..194)
    # lips: x 140..160.5 -> 140..160 (even; half-up 161), y 150..161.5 -> 150..162
    #   mid_x = 150, half = (20 * 2) // 2 = 20 -> 130..170 (half-up: 129..171)
    #   mid_y = 312 // 2 = 156, half = (12 * 2) // 2 = 12 -> 144..168
    pts = _landmarks({10: (100.5, 50.5), 152: (200.4, 180.6)}, {61: (140.0, 150.0), 291: (160.5, 161.5)})
    boxes = hallo_boxes(pts, (512, 512))
    assert boxes.face == (90, 37, 210, 193)
    assert boxes.lip == (130, 144, 170, 168)
    assert boxes.detected and boxes.method == "mediapipe:face_landmarker"
    assert all(type(v) is int for v in boxes.face + boxes.lip)
    regions = boxes.regions()
    assert isinstance(regions, FaceRegions) and regions.face == Box(90, 37, 210, 193)


def test_boxes_shifted_back_inside():
    # 300 x 200 image. face x 5..105: mid 55, half 60 -> -5..115 -> shifted right: 0..120;
    # y 100..195: mid 147, half (95 * 1.2 = 114.0) // 2 = 57 -> 90..204 -> shifted up: 86..200.
    pts = _landmarks({10: (5.0, 100.0), 152: (105.0, 195.0)}, {61: (40.0, 170.0), 291: (60.0, 176.0)},
                     face_fill=(50.0, 150.0), lip_fill=(50.0, 173.0))
    boxes = hallo_boxes(pts, (300, 200))
    assert boxes.face == (0, 86, 120, 200)
    # lips: mid_x 50, half 20 -> 30..70; mid_y 173, half 6 -> 167..179
    assert boxes.lip == (30, 167, 70, 179)
    assert expand_region([5.0, 105.0, 100.0, 195.0], 300, 200, 1.2) == (0, 120, 86, 200)


def test_box_larger_than_image_wraps_as_hallos_slice_with_a_warning():
    # 100 x 100 image, face x 5..95: mid 50, half (90 * 1.2 = 108) // 2 = 54 -> -4..104 -> 0..108 ->
    # -8..100. Hallo slices [-8:100]: only columns 92..99 are filled (its numpy slice wraps).
    pts = _landmarks({10: (5.0, 20.0), 152: (95.0, 60.0)}, {61: (45.0, 50.0), 291: (55.0, 52.0)},
                     face_fill=(50.0, 40.0), lip_fill=(50.0, 51.0))
    assert expand_region([5.0, 95.0, 20.0, 60.0], 100, 100, 1.2) == (-8, 100, 16, 64)
    with pytest.warns(UserWarning, match=r"x -8\.\.100.*wraps the negative start around.*reproduced"):
        boxes = hallo_boxes(pts, (100, 100))
    assert boxes.face == (-8, 16, 100, 64)
    face, _ = hallo_hard_masks(boxes)
    assert (face[16:64, 92:100] == 255).all() and face.sum() == 255 * 8 * 48
    assert boxes.regions().face.to_int() == (0, 16, 100, 64)  # the nominal box, clipped
    # fallback boxes (Hallo has none: it stops without a landmarker face) are clipped instead
    raw = FaceRegions(face=Box(5.0, 20.0, 95.0, 60.0), lip=Box(45.0, 50.0, 55.0, 52.0), image_size=(100, 100),
                      detected=True, method="haar:test")
    assert hallo_boxes_from_regions(raw).face == (0, 16, 100, 64)


def test_bad_landmarks_rejected():
    with pytest.raises(ValueError, match="landmarks"):
        hallo_boxes(np.zeros((10, 2)), (64, 64))
    bad = np.full((478, 2), 5.0)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hallo_boxes(bad, (64, 64))


# ------------------------------------------------------------------------- masks, pixels, locator


def _hallo_chain_via_files(tmp: Path, rgb: Image.Image, face_box, lip_box, size: int):
    """Hallo's get_mask + ImageProcessor.preprocess re-done with real PNG files (boxes as x0, y0, x1, y1)."""
    w, h = rgb.size
    face_mask = np.zeros((h, w), dtype=np.uint8)
    face_mask[face_box[1]:face_box[3], face_box[0]:face_box[2]] = 255
    lip_mask = np.zeros((h, w), dtype=np.uint8)
    lip_mask[lip_box[1]:lip_box[3], lip_box[0]:lip_box[2]] = 255
    cv2.imwrite(str(tmp / "p_face_mask.png"), face_mask)
    cv2.imwrite(str(tmp / "p_lip_mask.png"), lip_mask)
    for src, dst, k in (("p_face_mask.png", "p_face_mask_blur.png", 51), ("p_lip_mask.png", "p_sep_lip.png", 31)):
        m = cv2.imread(str(tmp / src), cv2.IMREAD_GRAYSCALE)
        m = cv2.resize(m, (64, 64))
        m = cv2.GaussianBlur(m, (k, k), 0)
        m = cv2.normalize(m, None, 0, 255, cv2.NORM_MINMAX)
        cv2.imwrite(str(tmp / dst), m)
    blur = cv2.imread(str(tmp / "p_face_mask_blur.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp / "p_sep_background.png"), ((1.0 - blur / 255.0) * 255).astype(np.uint8))
    lip = cv2.imread(str(tmp / "p_sep_lip.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp / "p_sep_face.png"), cv2.subtract(blur, lip))

    def tensor(img: Image.Image) -> torch.Tensor:  # torchvision ToTensor
        a = np.array(img)
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(a).permute(2, 0, 1).float() / 255

    def resize(img: Image.Image, n: int) -> Image.Image:  # torchvision Resize((n, n)) on PIL
        return img if img.size == (n, n) else img.resize((n, n), Image.BILINEAR)

    pixels = (tensor(resize(rgb, size)) - 0.5) / 0.5
    locator = tensor(resize(Image.open(tmp / "p_face_mask.png").convert("RGB"), size))
    levels = [size // 8, size // 16, size // 32, size // 64]
    sep = {k: Image.open(tmp / f"p_sep_{k}.png") for k in ("background", "face", "lip")}
    masks = {k: [tensor(resize(img, n)).view(1, -1)[0] for n in levels] for k, img in sep.items()}
    files = {k: cv2.imread(str(tmp / f"p_{k}.png"), cv2.IMREAD_GRAYSCALE)
             for k in ("face_mask_blur", "sep_lip", "sep_background", "sep_face")}
    return pixels, locator, masks, files, levels


@pytest.mark.parametrize("size", [512, 256])
def test_mask_chain_matches_hallo_recomputed(tmp_path, size):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))  # non-square: squashed
    pts = _landmarks({10: (100.5, 50.5), 152: (200.4, 180.6)}, {61: (140.0, 150.0), 291: (160.5, 161.5)})
    boxes = hallo_boxes(pts, rgb.size)
    assert boxes.face == (90, 37, 210, 193) and boxes.lip == (130, 144, 170, 168)  # 300 x 200: no shift needed
    prep = hallo_face_prep(rgb, boxes, size=size)
    pixels, locator, masks, files, levels = _hallo_chain_via_files(tmp_path, rgb, boxes.face, boxes.lip, size)

    # 64 x 64 uint8 maps: exact equality
    np.testing.assert_array_equal(prep.soft.face_blur, files["face_mask_blur"])
    np.testing.assert_array_equal(prep.soft.lip, files["sep_lip"])
    np.testing.assert_array_equal(prep.soft.background, files["sep_background"])
    np.testing.assert_array_equal(prep.soft.face, files["sep_face"])
    # truncation, not 255 - m, and a saturating subtraction: both matter on this input
    assert (files["sep_background"].astype(int) != 255 - files["face_mask_blur"].astype(int)).any()
    assert (files["face_mask_blur"].astype(int) < files["sep_lip"].astype(int)).any()

    # tensors: bit-identical (tolerance 0)
    assert prep.pixels.dtype == torch.float32 and prep.pixels.shape == (3, size, size)
    assert torch.equal(prep.pixels, pixels)
    assert prep.locator_input.shape == (3, size, size) and torch.equal(prep.locator_input, locator)
    assert torch.equal(prep.locator_input[0], prep.locator_input[2])
    assert prep.image.size == (size, size) and prep.image.mode == "RGB"
    assert isinstance(prep.masks, MaskSet)
    assert levels == hallo_level_sizes(size) and prep.masks.level_sizes == [(n, n) for n in levels]
    for mine, ref in ((prep.masks.full, masks["background"]), (prep.masks.face, masks["face"]),
                      (prep.masks.lip, masks["lip"])):
        assert len(mine) == 4
        for m, r, n in zip(mine, ref, levels):
            assert m.shape == (n * n,) and m.dtype == torch.float32
            assert torch.equal(m, r)
    assert prep.regions.face == Box(90, 37, 210, 193) and prep.regions.image_size == (300, 200)


def test_level_sizes():
    assert hallo_level_sizes() == [64, 32, 16, 8]
    assert hallo_level_sizes(1024) == [128, 64, 32, 16]
    for bad in (500, 32, 0):
        with pytest.raises(ValueError, match="multiple of 64"):
            hallo_level_sizes(bad)


def test_boxes_must_match_the_photo():
    boxes = HalloBoxes(face=(10, 10, 50, 50), lip=(20, 35, 40, 45), image_size=(64, 64), detected=True, method="t")
    with pytest.raises(ValueError, match="photo is"):
        hallo_face_prep(Image.new("RGB", (80, 64)), boxes)


# ----------------------------------------------------------------------------------- fallback


class _NoFace:
    def landmarks(self, rgb):
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
        return None


def test_fallback_regions_with_warning():
    img = Image.new("RGB", (300, 200), (90, 90, 90))
    # raw Haar-like boxes: corners np.round'ed and expanded as Hallo expands landmark boxes
    raw = FaceRegions(face=Box(100.5, 50.5, 200.4, 180.6), lip=Box(140, 150, 160.5, 161.5),
                      image_size=(300, 200), detected=True, method="haar:test")
    with pytest.warns(UserWarning, match="found no face in me.png.*fallback"):
        boxes = hallo_face_boxes(img, _NoFace(), fallback=raw, source="me.png")
    assert boxes.face == (90, 37, 210, 193) and boxes.lip == (130, 144, 170, 168)
    assert boxes.method == "fallback:haar:test" and boxes.detected
    assert hallo_boxes_from_regions(raw) == boxes
    # a callable fallback and no landmarker at all
    with pytest.warns(UserWarning, match="no MediaPipe face landmarker model"):
        assert hallo_face_boxes(img, None, fallback=lambda im: raw) == boxes
    # FaceRegions straight into hallo_face_prep: the same boxes, and a warning
    with pytest.warns(UserWarning, match="instead of MediaPipe's landmarks"):
        prep = hallo_face_prep(img, raw, size=128)
    assert prep.boxes == boxes


def test_default_fallback_is_the_haar_detector():
    img = Image.new("RGB", (128, 96), (200, 200, 200))  # nothing to find: Haar warns and uses its prior
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boxes = hallo_face_boxes(img, _NoFace(), source="blank.png")
    messages = " | ".join(str(w.message) for w in caught)
    assert "found no face in blank.png" in messages and "no face found in blank.png" in messages
    assert boxes.method == "fallback:none+prior" and not boxes.detected


# ----------------------------------------------------------------------------- real landmarker


@needs_task
def test_real_landmarker_on_photos():
    skimage_data = pytest.importorskip("skimage.data")
    with FaceLandmarker(TASK) as lm:
        astronaut = skimage_data.astronaut()
        pts = lm.landmarks(astronaut)
        assert pts is not None and pts.shape == (478, 2) and pts.dtype == np.float64
        boxes = hallo_face_boxes(Image.fromarray(astronaut), lm)
        # Eileen Collins' face in the 512 x 512 photo: roughly x 180..270, y 70..180 (before expansion)
        x0, y0, x1, y1 = boxes.face
        assert 140 <= x0 <= 200 and 250 <= x1 <= 310 and 30 <= y0 <= 100 and 160 <= y1 <= 230, boxes.face
        lx0, ly0, lx1, ly1 = boxes.lip
        assert x0 <= lx0 < lx1 <= x1 and (y0 + y1) / 2 < (ly0 + ly1) / 2 < y1, boxes
        assert boxes.detected and boxes.method == "mediapipe:face_landmarker"
        for name in ("chelsea", "coffee"):
            assert lm.landmarks(getattr(skimage_data, name)()) is None, name
        with pytest.raises(InputError, match="RGB uint8"):
            lm.landmarks(astronaut.astype(np.float32))


# ------------------------------------------------------------------------------------- errors


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_missing_and_foreign_task_files(tmp_path):
    missing = tmp_path / "face_landmarker_v2_with_blendshapes.task"
    with pytest.raises(CheckpointError, match="face_landmarker_v2_with_blendshapes.task does not exist"):
        FaceLandmarker(missing)
    with pytest.raises(CheckpointError, match="is not a file"):
        FaceLandmarker(tmp_path)
    rand = tmp_path / "random.task"
    rand.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=r"random\.task is not a MediaPipe \.task bundle"):
        FaceLandmarker(rand)
    other = _zip(tmp_path / "other.task", {"hello.txt": b"hi"})
    with pytest.raises(CheckpointError, match=r"other\.task is not a MediaPipe face landmarker.*face_detector\.tflite"):
        FaceLandmarker(other)


def test_corrupt_models_inside_a_bundle(tmp_path):
    pytest.importorskip("mediapipe")
    bad = _zip(tmp_path / "bad.task", {"face_detector.tflite": b"\0" * 256, "face_landmarks_detector.tflite": b"\0" * 256})
    with pytest.raises(CheckpointError, match=r"bad\.task"):
        FaceLandmarker(bad)


def test_mediapipe_missing(tmp_path, monkeypatch):
    ok_names = _zip(tmp_path / "f.task", {"face_detector.tflite": b"x", "face_landmarks_detector.tflite": b"x"})
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(CheckpointError, match="'mediapipe'"):
        FaceLandmarker(ok_names)


@needs_task
def test_truncated_real_bundle(tmp_path):
    pytest.importorskip("mediapipe")
    cut = tmp_path / "cut.task"
    cut.write_bytes(TASK.read_bytes()[: os.path.getsize(TASK) * 4 // 5])
    with pytest.raises(CheckpointError, match=r"cut\.task"):
        FaceLandmarker(cut)


@needs_task
def test_landmarks_match_mediapipe_called_as_hallo_does(tmp_path):
    """Hallo's get_landmark re-done with MediaPipe's own API on files: landmarks_from_file is identical
    (JPEG and PNG); landmarks() on PIL's decode is identical for the PNG."""
    mp = pytest.importorskip("mediapipe")
    skimage_data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skimage_data.astronaut())
    png, jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    photo.save(png)
    photo.save(jpg, quality=90)
    options = mp.tasks.vision.FaceLandmarkerOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(TASK)),
        running_mode=mp.tasks.vision.RunningMode.IMAGE)
    with mp.tasks.vision.FaceLandmarker.create_from_options(options) as ref, FaceLandmarker(TASK) as lm:
        for f in (png, jpg):
            image = mp.Image.create_from_file(str(f))
            faces = ref.detect(image).face_landmarks
            expected = np.array([[p.x * image.width, p.y * image.height] for p in faces[0]])
            np.testing.assert_array_equal(lm.landmarks_from_file(f), expected)
            if f == png:
                np.testing.assert_array_equal(lm.landmarks(np.asarray(Image.open(f).convert("RGB"))), expected)
                assert hallo_face_boxes(Image.open(f), lm, path=f) == hallo_boxes(expected, (512, 512))
        not_image = tmp_path / "x.jpg"
        not_image.write_bytes(b"not an image")
        with pytest.raises(InputError, match=r"x\.jpg"):
            lm.landmarks_from_file(not_image)
