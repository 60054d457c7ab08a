"""Face detection, Hallo masks, FaceLocator image and token masks."""

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from talkfast.errors import InputError  # noqa: E402
from talkfast.face.detect import Box, FaceRegions, detect_face, lip_prior, portrait_prior  # noqa: E402
from talkfast.face.masks import build_masks, face_locator_image, scaled_kernel, token_mask  # noqa: E402

# In skimage's astronaut (512x512) the face spans roughly x 175-270, y 65-175 (forehead to chin)
# and the mouth is centred near (223, 143).
MOUTH = (223.0, 143.0)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astro_regions(astronaut) -> FaceRegions:
    return detect_face(astronaut)


def _inside(point, box: Box, tol: float = 0.0) -> bool:
    x, y = point
    return box.x0 - tol <= x <= box.x1 + tol and box.y0 - tol <= y <= box.y1 + tol


def _no_face(size=(256, 256)) -> FaceRegions:
    with pytest.warns(UserWarning, match="no face found"):
        return detect_face(np.zeros((size[1], size[0], 3), np.uint8))


# ---------------------------------------------------------------------------------------- Box


def test_box_helpers():
    b = Box(10, 20, 50, 100)
    assert (b.width, b.height, b.center, b.area) == (40.0, 80.0, (30.0, 60.0), 3200.0)
    assert b.scale(0.5, 2.0) == Box(5, 40, 25, 200)
    assert b.scale(2.0) == Box(20, 40, 100, 200)
    assert Box(0.4, 1.6, 2.5, 3.49).to_int() == (0, 2, 2, 3)
    with pytest.raises(ValueError):
        Box(5, 0, 1, 1)


def test_box_expand_shifts_back_inside_instead_of_clipping():
    # Expanded about the centre without limits.
    assert Box(40, 40, 60, 60).expand(2.0) == Box(30, 30, 70, 70)
    # Sticks out on the left/top: moved right/down with its size kept (Hallo's expand_region).
    e = Box(0, 10, 20, 30).expand(2.0, 100, 100)
    assert e == Box(0, 0, 40, 40)
    # Sticks out on the right/bottom.
    e = Box(85, 90, 95, 100).expand(2.0, 100, 100)
    assert e == Box(80, 80, 100, 100)
    # Larger than the image: clipped on that axis only.
    e = Box(10, 40, 90, 60).expand(2.0, 100, 100)
    assert e == Box(0, 30, 100, 70)


# ----------------------------------------------------------------------------------- detection


def test_detects_astronaut_face_and_lips(astro_regions):
    r = astro_regions
    assert r.detected and r.method.startswith("haar:")
    assert r.image_size == (512, 512)
    face, lip = r.face, r.lip
    # The box is on the face: inside the expected area, of plausible size, containing the mouth.
    assert 160 <= face.x0 <= 195 and 255 <= face.x1 <= 285, face
    assert 50 <= face.y0 <= 85 and 150 <= face.y1 <= 200, face
    assert _inside(MOUTH, face)
    # Lip box: inside the lower half of the face box, around the mouth.
    assert face.x0 <= lip.x0 < lip.x1 <= face.x1
    assert face.y0 + 0.5 * face.height <= lip.y0 < lip.y1 <= face.y1
    assert _inside(MOUTH, lip, tol=4)
    assert lip.width < face.width and lip.height < 0.5 * face.height


def test_accepts_pil_and_float_images(astronaut, astro_regions):
    r_pil = detect_face(Image.fromarray(astronaut))
    assert r_pil.face == astro_regions.face
    r_float = detect_face(astronaut.astype(np.float32) / 255.0)
    assert r_float.detected and _inside(MOUTH, r_float.face)


def test_keeps_the_largest_of_two_faces(astronaut):
    crop = astronaut[40:200, 150:300]  # 150 x 160 face crop
    canvas = np.full((440, 720, 3), 200, np.uint8)
    canvas[30:190, 40:190] = crop  # small face, top-left
    big = cv2.resize(crop, (240, 256), interpolation=cv2.INTER_CUBIC)
    canvas[150:406, 430:670] = big  # large face, bottom-right (1.6x)
    r = detect_face(canvas)
    assert r.detected
    cx, cy = r.face.center
    assert 430 < cx < 670 and 150 < cy < 406, r.face
    assert r.face.width > 120


def test_small_image_small_face(astronaut):
    # 128x128: the face is only about 25 px wide.
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    r = detect_face(small)
    assert r.detected
    assert _inside((MOUTH[0] / 4, MOUTH[1] / 4), r.face)
    assert r.face.y0 + 0.5 * r.face.height <= r.lip.center[1] <= r.face.y1


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_fallback(kind):
    rng = np.random.default_rng(0)
    img = np.zeros((240, 320, 3), np.uint8) if kind == "blank" else rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="no face found in portrait.png; using full-frame attention masks"):
        r = detect_face(img, source="portrait.png")
    assert not r.detected and r.method == "none+prior"
    assert r.image_size == (320, 240)
    assert r.face == portrait_prior(320, 240)
    assert r.face.center == (160.0, 120.0)
    assert r.face.width == pytest.approx(0.70 * 320) and r.face.height == pytest.approx(0.85 * 240)
    assert r.lip == lip_prior(r.face)
    assert r.lip.center == pytest.approx((160.0, r.face.y0 + 0.78 * r.face.height))


def test_bad_images_raise_input_error():
    with pytest.raises(InputError):
        detect_face(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(InputError):
        detect_face("not an image")


# --------------------------------------------------------------------------------------- masks


def test_masks_shapes_ranges_and_layout(astro_regions):
    m = build_masks(astro_regions)
    assert m.level_sizes == [(64, 64), (32, 32), (16, 16), (8, 8)]
    for maps in (m.full, m.face, m.lip):
        assert [t.shape for t in maps] == [(4096,), (1024,), (256,), (64,)]
        for t in maps:
            assert t.dtype == torch.float32
            assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    full, face, lip = (x.reshape(64, 64) for x in m.level(0))
    assert float(lip.max()) == pytest.approx(1.0)
    # Lip peak lies in the lip box (one 64-grid cell is 8 px).
    row, col = divmod(int(lip.argmax()), 64)
    assert _inside(((col + 0.5) * 8, (row + 0.5) * 8), astro_regions.lip, tol=8)
    # Face map: a ring around the lips over the (blurred) face box, zero far away.
    row, col = divmod(int(face.argmax()), 64)
    peak = ((col + 0.5) * 8, (row + 0.5) * 8)
    assert float(face.max()) > 0.3
    assert _inside(peak, astro_regions.face.expand(1.6)) and not _inside(peak, astro_regions.lip)
    assert float(face[60, 2]) == pytest.approx(0.0, abs=1e-6)
    # Full (pose/background) map ~1 far from the face, ~0 at the face centre.
    assert float(full[60, 2]) > 0.99 and float(full[2, 60]) > 0.99
    fcx, fcy = astro_regions.face.center
    assert float(full[int(fcy / 8), int(fcx / 8)]) < 0.05
    # Soft partition of unity on every level.
    for i in range(4):
        s = sum(m.level(i))
        assert float(s.min()) >= 1.0 - 1e-5 and float(s.max()) <= 1.1


def test_masks_small_base_and_levels(astronaut):
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    r = detect_face(small)
    m = build_masks(r, level_sizes=(16, 8, 4, 2), base=32)
    for maps in (m.full, m.face, m.lip):
        assert [t.shape for t in maps] == [(256,), (64,), (16,), (4,)]
        assert all(0.0 <= float(t.min()) and float(t.max()) <= 1.0 for t in maps)
    row, col = divmod(int(m.lip[0].argmax()), 16)
    assert _inside(((col + 0.5) * 8, (row + 0.5) * 8), r.lip, tol=8)
    assert float(m.full[0].reshape(16, 16)[15, 0]) > 0.99
    # Kernels scale with base and stay odd.
    assert scaled_kernel(51, 64) == 51 and scaled_kernel(31, 64) == 31
    assert scaled_kernel(51, 32) == 25 and scaled_kernel(31, 32) == 15
    assert all(scaled_kernel(k, b) % 2 == 1 for k in (51, 31) for b in (8, 16, 24, 32, 48, 96, 128))
    # Non-square levels are accepted too.
    m2 = build_masks(r, level_sizes=[(12, 8)], base=32)
    assert m2.full[0].shape == (96,)


def test_masks_same_boxes_same_masks_at_any_image_size(astro_regions):
    a = build_masks(astro_regions, level_sizes=(16,))
    b = build_masks(astro_regions.rescaled((1024, 1024)), level_sizes=(16,))
    torch.testing.assert_close(a.lip[0], b.lip[0], atol=0.03, rtol=0)
    torch.testing.assert_close(a.full[0], b.full[0], atol=0.03, rtol=0)


def test_no_face_masks_are_full_frame():
    r = _no_face((256, 256))
    m = build_masks(r)
    for full, face, lip in zip(m.full, m.face, m.lip):
        assert float(full.abs().max()) == 0.0
        torch.testing.assert_close(face + lip, torch.ones_like(face))
    lip = m.lip[0].reshape(64, 64)
    row, col = divmod(int(lip.argmax()), 64)
    assert _inside(((col + 0.5) * 4, (row + 0.5) * 4), r.lip, tol=4)
    assert float(m.face[0].reshape(64, 64)[2, 2]) == pytest.approx(1.0)


def test_face_locator_image(astro_regions):
    img = face_locator_image(astro_regions, 512)
    assert img.shape == (3, 512, 512) and img.dtype == torch.float32
    assert set(img.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(img[0], img[2])
    ys, xs = torch.nonzero(img[0], as_tuple=True)
    expected = astro_regions.face.expand(1.2, 512, 512).to_int()
    assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == expected
    # Smaller output: the box is scaled with the image.
    small = face_locator_image(astro_regions, 64)
    assert small.shape == (3, 64, 64)
    cx, cy = astro_regions.face.center
    assert float(small[0, int(cy / 8), int(cx / 8)]) == 1.0 and float(small[0, 63, 0]) == 0.0


def test_token_mask(astro_regions):
    tm = token_mask(astro_regions, (16, 16))
    assert tm.shape == (256,) and tm.dtype == torch.bool
    grid = tm.reshape(16, 16)
    cx, cy = astro_regions.face.center
    assert bool(grid[int(cy / 32), int(cx / 32)])
    assert not bool(grid[15, 0]) and not bool(grid[0, 15])
    assert 4 <= int(tm.sum()) < 64
    # More dilation -> superset.
    wide = token_mask(astro_regions, (16, 16), dilate=0.5)
    assert bool((wide | tm).eq(wide).all()) and int(wide.sum()) > int(tm.sum())
    assert token_mask(astro_regions, (8, 4)).shape == (32,)
    no_face = _no_face((128, 96))
    assert bool(token_mask(no_face, (6, 8)).all()) and token_mask(no_face, (6, 8)).shape == (48,)


def test_rescaled_regions(astro_regions):
    r = astro_regions.rescaled((256, 128))
    assert r.image_size == (256, 128)
    assert r.face == astro_regions.face.scale(0.5, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_masks(r, level_sizes=(8,))
