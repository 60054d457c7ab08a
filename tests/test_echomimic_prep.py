"""EchoMimic v1's input preparation (antgroup/echomimic a53e970: infer_audio2vid.py, infer_audio2vid_acc.py,
src/utils/util.py crop_and_pad, src/pipelines/pipeline_echo_mimic*.py, src/models/whisper/whisper/model.py).

* MTCNN (talkfast.face.mtcnn) against facenet-pytorch 2.5.0's own ``MTCNN.detect``, run here under a
  test-only ``torchvision`` stand-in (a hand-written NMS in this file) because torchvision cannot be
  installed beside the CPU torch wheel; the NMS pinned on hand-computed boxes;
* the crop and mask against EchoMimic's lines restated here (``select_face``, the mask slice,
  ``crop_and_pad``, ``cv2.resize``) on facenet's box; no face against diffusers' ``VaeImageProcessor``;
* the seed default, the unguided window sum, and whisper in half precision against a plain
  re-computation of EchoMimic's encoder from the openai-format weights.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import types
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from talkfast.errors import CheckpointError
from talkfast.face import mtcnn as M
from talkfast.face.masks import echomimic_crop, echomimic_face_mask
from talkfast.pipeline.echomimic import ECHOMIMIC_SEED, EchoMimicPipeline, echomimic_portrait
from talkfast.pipeline.generate import GenerateOptions, TalkingHeadPipeline
from talkfast.sampling.windows import WindowedPredictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
skdata = pytest.importorskip("skimage.data")


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------

HAND_BOXES = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 5]],
                          dtype=torch.float32)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.85, 0.9, 0.95])


def test_nms_hand_boxes():
    # order (stable, by score): 4 (.95), 0 (.9), 3 (.9, tie after 0), 2, 1.
    # IoU(4, 0) = 50/100 = 0.5 exactly: not suppressed (only > threshold); IoU(3, 0) = 1;
    # IoU(1, 0) = 81/119 = 0.681; IoU(1, 4) = 36/114; box 2 touches nothing.
    assert M.nms(HAND_BOXES, HAND_SCORES, 0.5).tolist() == [4, 0, 2]
    assert M.nms(HAND_BOXES, HAND_SCORES, 0.7).tolist() == [4, 0, 2, 1]
    # 0.49: box 0 falls to box 4, and a suppressed box suppresses nothing, so box 1 (IoU 0.32 with 4) stays
    assert M.nms(HAND_BOXES, HAND_SCORES, 0.49).tolist() == [4, 2, 1]
    # per category: box 1 alone in category 1 survives; result by decreasing score
    idxs = torch.tensor([0, 1, 0, 0, 0])
    assert M.batched_nms(HAND_BOXES, HAND_SCORES, idxs, 0.5).tolist() == [4, 0, 2, 1]
    assert M.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def _hand_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS in plain Python over float32 numpy scalars (torchvision's CPU kernel, restated)."""
    b = boxes.detach().cpu().numpy().astype(np.float32)
    s = scores.detach().cpu().numpy()
    order = np.argsort(-s, kind="stable")
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    dead = np.zeros(len(b), bool)
    keep = []
    for a, i in enumerate(order):
        if dead[i]:
            continue
        keep.append(int(i))
        for j in order[a + 1:]:
            if dead[j]:
                continue
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = np.float32(w * h)
            if np.float32(inter / np.float32(area[i] + area[j] - inter)) > thr:
                dead[j] = True
    return torch.tensor(keep, dtype=torch.int64)


def _hand_batched_nms(boxes, scores, idxs, thr):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _hand_nms(boxes + offsets[:, None], scores, thr)


def test_nms_random_boxes_equal_the_hand_loop():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1100, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(1100, 2, generator=g) * 40], 1)
    scores = torch.rand(1100, generator=g).round(decimals=2)  # many ties
    for thr in (0.3, 0.5, 0.7):
        assert M.nms(boxes, scores, thr).tolist() == _hand_nms(boxes, scores, thr).tolist()
    idxs = torch.zeros(1100, dtype=torch.long)  # > 4000 coordinates: the per-category path
    assert M.batched_nms(boxes, scores, idxs, 0.5).tolist() == _hand_nms(boxes, scores, 0.5).tolist()


# ---------------------------------------------------------------------------------------------
# facenet-pytorch's own MTCNN under a torchvision stand-in
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facenet():
    """facenet_pytorch.MTCNN built as EchoMimic builds it, importable through a stand-in torchvision
    (ops.boxes.batched_nms = this file's hand NMS); sys.modules restored afterwards."""
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch is not installed")
    before = dict(sys.modules)
    tv = types.ModuleType("torchvision")
    ops, boxes = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.boxes")
    tr, fn = types.ModuleType("torchvision.transforms"), types.ModuleType("torchvision.transforms.functional")
    boxes.batched_nms = _hand_batched_nms
    ops.boxes, tv.ops, tv.transforms, tr.functional = boxes, ops, tr, fn
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    try:
        from facenet_pytorch import MTCNN

        yield MTCNN(image_size=320, margin=0, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709,
                    post_process=True, device="cpu")
    finally:
        for k in set(sys.modules) - set(before):
            del sys.modules[k]
        sys.modules.update(before)


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _astronaut_offset() -> np.ndarray:
    """The astronaut pasted at an offset into a larger grey canvas (RGB)."""
    canvas = np.full((640, 720, 3), 128, np.uint8)
    canvas[100:612, 150:662] = skdata.astronaut()
    return canvas


IMAGES = {
    "astronaut": lambda: skdata.astronaut(),
    "astronaut_200": lambda: cv2.resize(skdata.astronaut(), (200, 200), interpolation=cv2.INTER_AREA),
    "coffee": lambda: skdata.coffee(),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_detect_equals_facenet(facenet, name):
    """Boxes and probabilities of facenet's MTCNN.detect on the BGR array, to the bit (atol 0) on CPU."""
    bgr = _bgr(IMAGES[name]())
    ref_boxes, ref_probs = facenet.detect(bgr)
    boxes, probs = M.load_mtcnn().detect(bgr)
    if name == "coffee":
        assert ref_boxes is None and boxes is None and list(probs) == [None] == list(ref_probs)
        return
    assert ref_boxes is not None and len(ref_boxes) >= 1
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=0)
    np.testing.assert_allclose(probs, ref_probs.astype(np.float32), rtol=0, atol=0)


def _select_face(det_bboxes, probs):
    """infer_audio2vid.py select_face, restated."""
    if det_bboxes is None or probs is None:
        return None
    kept = [det_bboxes[i] for i in range(len(det_bboxes)) if probs[i] > 0.8]
    if not kept:
        return None
    return sorted(kept, key=lambda x: (x[3] - x[1]) * (x[2] - x[0]), reverse=True)[0]


def _crop_and_pad(image, rect):
    x0, y0, x1, y1 = rect
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    nx0, ny0 = max(0, cx - side // 2), max(0, cy - side // 2)
    nx1, ny1 = min(w, nx0 + side), min(h, ny0 + side)
    if nx1 - nx0 != ny1 - ny0:
        side = min(nx1 - nx0, ny1 - ny0)
        nx1, ny1 = nx0 + side, ny0 + side
    return image[ny0:ny1, nx0:nx1]


def _echomimic_prepare(face_img: np.ndarray, det, size: int):
    """infer_audio2vid.py's "face musk prepare" / "face crop" lines on a BGR array -> (RGB image, mask uint8)."""
    face_mask = np.zeros(face_img.shape[:2], np.uint8)
    det_bboxes, probs = det.detect(face_img)
    sel = _select_face(det_bboxes, probs)
    if sel is None:
        face_mask[:, :] = 255
        return face_img[:, :, [2, 1, 0]], face_mask, None
    xyxy = np.round(sel[:4]).astype("int")
    rb, re_, cb, ce = xyxy[1], xyxy[3], xyxy[0], xyxy[2]
    r_pad, c_pad = int((re_ - rb) * 0.1), int((ce - cb) * 0.1)
    face_mask[rb - r_pad : re_ + r_pad, cb - c_pad : ce + c_pad] = 255
    rc, cc = int((re_ - rb) * 0.5), int((ce - cb) * 0.5)
    rect = [max(0, cb - cc), max(0, rb - rc), min(ce + cc, face_img.shape[1]), min(re_ + rc, face_img.shape[0])]
    img = cv2.resize(_crop_and_pad(face_img, rect), (size, size))
    mask = cv2.resize(_crop_and_pad(face_mask, rect), (size, size))
    return img[:, :, [2, 1, 0]], mask, tuple(int(v) for v in xyxy)


@pytest.mark.parametrize("name", ["astronaut", "offset", "astronaut_200"])
@pytest.mark.parametrize("size", [512, 64])
def test_portrait_equals_echomimic(facenet, name, size):
    """The reference crop (uint8, exact) and the face mask (exact /255) of EchoMimic's lines."""
    rgb = _astronaut_offset() if name == "offset" else IMAGES[name]()
    ref_img, ref_mask, ref_box = _echomimic_prepare(_bgr(rgb), facenet, size)
    por = echomimic_portrait(Image.fromarray(rgb), size)
    assert por.regions.detected and por.regions.face.to_int() == ref_box
    np.testing.assert_array_equal(np.asarray(por.image), ref_img)
    np.testing.assert_array_equal(por.mask[0].numpy(), ref_mask.astype(np.float32) / 255.0)
    assert M.echomimic_face_box(_bgr(rgb)) == ref_box


def test_no_face_keeps_the_whole_photo(facenet):
    """coffee: no face -> the whole photo squashed by the pipeline's VaeImageProcessor, an all-ones mask."""
    from diffusers.image_processor import VaeImageProcessor

    rgb = skdata.coffee()
    _, ref_mask, box = _echomimic_prepare(_bgr(rgb), facenet, 64)
    assert box is None and (ref_mask == 255).all()
    por = echomimic_portrait(Image.fromarray(rgb), 64)
    assert not por.regions.detected
    ref = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True).preprocess(Image.fromarray(rgb), height=64, width=64)
    torch.testing.assert_close(por.pixels, ref[0].float(), rtol=0, atol=1e-6)
    assert por.mask.shape == (1, 64, 64) and bool((por.mask == 1).all())
    assert echomimic_crop(rgb, None, 64) is None


def test_crop_is_cv2_bilinear_of_crop_and_pad():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    box = (150.4, 60.6, 250.5, 190.2)  # np.round -> (150, 61, 250, 190)
    rect = [max(0, 150 - 50), max(0, 61 - 64), min(250 + 50, 400), min(190 + 64, 300)]
    ref = cv2.resize(_crop_and_pad(rgb, rect), (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(echomimic_crop(rgb, box, 96), ref)


def test_top_edge_wrap_is_reproducible_but_not_the_default():
    """A face touching the top: EchoMimic's slice starts at row -4 and wraps (an empty mask here);
    wrap=True reproduces it, the function's default clips (echomimic_portrait asks for the wrap)."""
    w, h, box = 400, 300, (150, 2, 250, 42)  # r_pad 4 -> rows -4 .. 46: empty slice
    full = np.zeros((h, w), np.uint8)
    full[2 - 4 : 42 + 4, 150 - 10 : 250 + 10] = 255
    assert full.max() == 0
    rc, cc = 20, 50
    rect = [100, 0, 300, 62]
    ref = cv2.resize(_crop_and_pad(full, rect), (64, 64)).astype(np.float32) / 255
    got = echomimic_face_mask(box, (w, h), 64, uint8=True, wrap=True)
    np.testing.assert_array_equal(got[0].numpy(), ref)
    assert rc == int(40 * 0.5) and cc == int(100 * 0.5)
    assert float(echomimic_face_mask(box, (w, h), 64, uint8=True).max()) == 1.0


def test_missing_facenet_is_a_checkpoint_error_and_the_portrait_falls_back(monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "facenet_pytorch" else real(n, *a))
    M._cached.cache_clear()
    try:
        with pytest.raises(CheckpointError, match="facenet-pytorch"):
            M.load_mtcnn()
        with caplog.at_level(logging.WARNING):
            por = echomimic_portrait(Image.fromarray(skdata.astronaut()), 64)
    finally:
        M._cached.cache_clear()
    assert por.regions.method.startswith("haar") and por.regions.detected
    notes = [r for r in caplog.records if "Haar" in r.getMessage()]
    assert len(notes) == 1 and "facenet-pytorch" in notes[0].getMessage()


def test_bad_weights_are_a_checkpoint_error(tmp_path):
    (tmp_path / "pnet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="pnet.pt"):
        M.MTCNN(weights_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Seed, unguided window arithmetic
# ---------------------------------------------------------------------------------------------


def test_seed_default_is_per_family():
    assert ECHOMIMIC_SEED == 420
    fake = SimpleNamespace(variant="default", cfg=SimpleNamespace(name="echomimic"), default_fps=24, sampler="ddim")
    fake.with_sampler = lambda opts: TalkingHeadPipeline.with_sampler(fake, opts)
    assert EchoMimicPipeline.resolve(fake, None).seed == 420
    assert EchoMimicPipeline.resolve(fake, GenerateOptions(seed=7)).seed == 7
    fake.variant = "acc"
    assert EchoMimicPipeline.resolve(fake, GenerateOptions()).seed == 420
    for preset in ("hallo", "memo", "tiny"):
        assert GenerateOptions().resolved(preset).seed == 42
    assert GenerateOptions(seed=0).resolved("hallo").seed == 0


@pytest.mark.parametrize("average", [False, True])
def test_unguided_windows_sum_or_average(average):
    """pipeline_echo_mimic.py without CFG adds the windows up (noise_pred, never / counter); the acc
    pipeline divides. L = 15, windows [0..11] and [9..14, 0..5]: frames 0-5 and 9-11 are in both.
    Window k's output is (k + 1) * (1 + frame / 100), so the sum and the average are hand-computable."""
    length = 15

    def run(x, t, plan, halves, frames):
        w = 1.0 if int(frames[0, 0]) == 0 else 2.0
        val = w * (1 + frames.float() / 100)  # (n, f)
        return val[:, None, :, None, None].expand(len(halves) * x.shape[0], 1, -1, 1, 1).clone()

    pred = WindowedPredictor(run, [999], length, 1.0, average_unguided=average)
    out = pred(torch.zeros(1, 1, length, 1, 1), torch.tensor([999]), None)[0, 0, :, 0, 0]
    f = torch.arange(length).float()
    in_first = (f <= 11).float()
    in_second = ((f >= 9) | (f <= 5)).float()  # 9..14 then 0..5
    total = in_first * (1 + f / 100) + in_second * 2 * (1 + f / 100)
    expected = total / (in_first + in_second) if average else total
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # with guidance both pipelines divide before u + g (c - u)
    g = WindowedPredictor(run, [999], length, 2.5, average_unguided=average)
    torch.testing.assert_close(g(torch.zeros(1, 1, length, 1, 1), torch.tensor([999]), None)[0, 0, :, 0, 0],
                               total / (in_first + in_second), rtol=0, atol=1e-6)


def test_pipeline_variants_choose_the_sum():
    for variant, average in (("default", False), ("pose", False), ("acc", True), ("pose_acc", True)):
        fake = SimpleNamespace(net=None, dtype=torch.float32, shift=2, variant=variant)
        pred = EchoMimicPipeline.make_window_predictor(fake, torch.zeros(1, 4, 1, 8, 8), torch.zeros(15, 50, 8),
                                                       1.0, [999], 15)
        assert pred.average_unguided is average


# ---------------------------------------------------------------------------------------------
# Whisper in half precision
# ---------------------------------------------------------------------------------------------


def _echomimic_encoder(sd: dict, mel: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    """EchoMimic's AudioEncoder.forward(include_embeddings=True), restated from whisper/model.py on the
    openai-format fp32 weights: Linear/Conv1d cast weights to the input dtype, LayerNorm runs on
    x.float() and casts back, softmax on (q k).float(); positions added in fp32 then cast."""
    def lin(x, p):
        b = sd.get(p + ".bias")
        return F.linear(x, sd[p + ".weight"].to(x.dtype), None if b is None else b.to(x.dtype))

    def ln(x, p):
        return F.layer_norm(x.float(), (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], 1e-5).type(x.dtype)

    dt = mel.dtype
    x = F.gelu(F.conv1d(mel, sd["encoder.conv1.weight"].to(dt), sd["encoder.conv1.bias"].to(dt), padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"].to(dt), sd["encoder.conv2.bias"].to(dt), stride=2, padding=1))
    x = x.permute(0, 2, 1)
    x = (x + sd["encoder.positional_embedding"]).to(x.dtype)
    out = [x]
    for i in range(layers):
        p = f"encoder.blocks.{i}."
        h = ln(x, p + "attn_ln")
        q, k, v = lin(h, p + "attn.query"), lin(h, p + "attn.key"), lin(h, p + "attn.value")
        n_batch, n_ctx, n_state = q.shape
        scale = (n_state // heads) ** -0.25
        q = q.view(n_batch, n_ctx, heads, -1).permute(0, 2, 1, 3) * scale
        k = k.view(n_batch, n_ctx, heads, -1).permute(0, 2, 3, 1) * scale
        v = v.view(n_batch, n_ctx, heads, -1).permute(0, 2, 1, 3)
        w = F.softmax((q @ k).float(), dim=-1).to(q.dtype)
        x = x + lin((w @ v).permute(0, 2, 1, 3).flatten(start_dim=2), p + "attn.out")
        x = x + lin(F.gelu(lin(ln(x, p + "mlp_ln"), p + "mlp.0")), p + "mlp.2")
        out.append(x)
    return torch.stack(out, dim=1)  # (B, layers + 1, n_ctx, D) as np.stack(embeddings, axis=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_whisper_half_equals_echomimic(tmp_path, dtype):
    from test_whisper_features import BLOCKS, DIMS, HEADS, openai_state_dict

    from talkfast.audio.whisper import WhisperFeatures

    sd = openai_state_dict()
    path = tmp_path / "whisper_tiny.pt"
    torch.save({"dims": DIMS, "model_state_dict": sd}, path)
    feats = WhisperFeatures(path, dtype=dtype)
    assert feats.dtype == dtype and feats.encoder.conv1.weight.dtype == torch.float32
    g = torch.Generator().manual_seed(5)
    n = 301
    mel = (torch.rand(80, n, generator=g) * 2 - 1.0)
    got = feats.encode_segment(mel)
    x = F.pad(mel, (0, 3000 - n))[None].to(dtype)
    ref = _echomimic_encoder(sd, x, HEADS, BLOCKS)[0].permute(1, 0, 2)[: n // 2].float()  # (rows, 5, D)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # and the fp32 path (transformers' forward) agrees with the fp32 re-computation to rounding
    full = WhisperFeatures(path, dtype=torch.float32).encode_segment(mel)
    ref32 = _echomimic_encoder(sd, F.pad(mel, (0, 3000 - n))[None], HEADS, BLOCKS)[0].permute(1, 0, 2)[: n // 2]
    torch.testing.assert_close(full, ref32, rtol=1e-4, atol=1e-4)
    assert math.isfinite(float((got - full).abs().max()))


def test_portrait_reproduces_echomimics_wrapped_mask_with_a_warning(monkeypatch, caplog):
    import talkfast.pipeline.echomimic as E

    monkeypatch.setattr(E, "echomimic_face_box", lambda bgr, det: (150, 2, 250, 42))  # rows -4 .. 46
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    with caplog.at_level(logging.WARNING):
        por = E.echomimic_portrait(photo, 64, detector=object())
    assert por.regions.detected and float(por.mask.max()) == 0.0  # EchoMimic's empty mask
    torch.testing.assert_close(por.mask, echomimic_face_mask((150, 2, 250, 42), (400, 300), 64, uint8=True, wrap=True),
                               rtol=0, atol=0)
    assert any("wraps around" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)
