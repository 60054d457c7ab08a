"""Synthetic talking-head corpus: build it deterministically, load it lazily.

Layout of a corpus folder::

    corpus.json                 manifest: settings, identities (split + parameters), sentence split, samples
    train/<sample_id>/          one folder per sample (test/<sample_id>/ for the test split)
        frames.npz              frames, masks and per-frame ground truth (see below)
        audio.wav               16 kHz mono PCM16 speech
        meta.json               identity, voice, text, split, per-frame boxes and mouth target, ...
        reference.png           neutral closed-mouth portrait of the identity (the "source image")
        preview.mp4             optional (``preview=True``): H.264/AAC video with the audio

``frames.npz`` holds ``frames_delta`` (uint8 ``(T, H, W, 3)``: frame 0, then each frame minus the
previous one modulo 256; :func:`decode_frames` undoes it with a wrapping cumulative sum. The static
background makes these deltas mostly zero, so the lossless file is ~5x smaller than plain
compressed frames), ``masks`` (head masks, ``np.packbits`` along the width), ``face_boxes`` and
``mouth_boxes`` (float32 ``(T, 4)`` x0, y0, x1, y1 in pixels), ``mouth_target`` (float32
``(T, 2)`` openness, width), ``pose`` (float32 ``(T, 4)`` dx, dy, degrees, scale) and ``blink``
(float32 ``(T,)`` eyelid closure). Frames are at 25 fps and ``T = ceil(audio_seconds * 25)``.

Splits hold out identities *and* sentences: a seeded ``test_fraction`` of the identities and a
separate pool of sentences are test-only; test samples are held-out identities speaking held-out
sentences, train samples are train identities speaking train sentences, so no identity and no
sentence is shared between the splits.

Everything is a function of the seed: the same arguments give byte-identical ``frames.npz``,
``audio.wav``, ``meta.json``, ``reference.png`` and ``corpus.json`` (npz members carry a fixed
timestamp; espeak-ng runs in a fresh process per utterance). ``preview.mp4`` is not covered.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from talkfast.data.render import FaceRenderer, Identity
from talkfast.data.sentences import SENTENCES
from talkfast.data.speech import synthesize
from talkfast.data.visemes import FPS, mouth_target
from talkfast.errors import InputError, OutputError
from talkfast.io.audio import Audio, load_audio, save_wav

__all__ = ["CORPUS_FORMAT", "Sample", "build_corpus", "corpus_summary", "decode_frames", "encode_frames",
           "load_corpus", "plan_corpus", "read_manifest"]

CORPUS_FORMAT = "talkfast-synthetic-corpus"
CORPUS_VERSION = 1
SPLITS = ("train", "test")
StrPath = str | os.PathLike[str]
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------------------- file formats
def encode_frames(frames: np.ndarray) -> np.ndarray:
    """Temporal delta modulo 256 (uint8): frame 0, then ``frames[t] - frames[t-1]``."""
    f = np.asarray(frames, np.uint8)
    out = np.empty_like(f)
    out[:1] = f[:1]
    np.subtract(f[1:], f[:-1], out=out[1:])  # uint8 arithmetic wraps modulo 256
    return out


def decode_frames(delta: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_frames`."""
    return np.cumsum(np.asarray(delta, np.uint8), axis=0, dtype=np.uint8)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible (fixed member timestamps and order)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def _write_png(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB").save(path, format="PNG", optimize=False,
                                                                     compress_level=6)


def _r(values, nd: int = 3) -> list:
    return np.round(np.asarray(values, np.float64), nd).tolist()


# ---------------------------------------------------------------------------------- planning
def _derive(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]).generate_state(1)[0])


@dataclass(frozen=True)
class PlannedSample:
    sample_id: str
    split: str
    identity: int
    sentence_id: int
    rate: int
    pitch: int
    seed: int


@dataclass
class CorpusPlan:
    seed: int
    size: int
    num_identities: int
    sentences_per_identity: int
    test_fraction: float
    identity_split: dict[int, str]
    sentence_split: dict[str, list[int]]
    identities: dict[int, Identity]
    samples: list[PlannedSample] = field(default_factory=list)


def plan_corpus(num_identities: int, sentences_per_identity: int, seed: int, size: int = 128,
                test_fraction: float = 0.2, *, photo_backgrounds: bool = False) -> CorpusPlan:
    """Decide identities, splits, sentences, voices and per-sample seeds (no rendering)."""
    n_id, m = int(num_identities), int(sentences_per_identity)
    if n_id < 1:
        raise InputError(f"need at least 1 identity, got {num_identities}")
    if m < 1:
        raise InputError(f"need at least 1 sentence per identity, got {sentences_per_identity}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5E]))
    # identities: a held-out test set (at least one when there are two or more identities)
    n_test_id = 0
    if test_fraction > 0 and n_id >= 2:
        n_test_id = min(n_id - 1, max(1, round(test_fraction * n_id)))
    order = rng.permutation(n_id)
    test_ids = {int(i) for i in order[:n_test_id]}
    identity_split = {i: ("test" if i in test_ids else "train") for i in range(n_id)}
    # sentences: a held-out pool big enough for one test identity's sentences
    n_sent = len(SENTENCES)
    n_test_sent = 0
    if n_test_id:
        n_test_sent = max(m, round(test_fraction * n_sent))
    if n_sent - n_test_sent < m:
        most = n_sent // 2 if n_test_id else n_sent
        raise InputError(f"{m} sentences per identity is too many: there are {n_sent} built-in sentences, "
                         f"so at most {most} per identity with a held-out test pool")
    s_order = [int(s) for s in rng.permutation(n_sent)]
    sentence_split = {"test": sorted(s_order[:n_test_sent]), "train": sorted(s_order[n_test_sent:])}
    identities = {i: Identity.sample(_derive(seed, 1, i), photo_backgrounds=photo_backgrounds) for i in range(n_id)}
    plan = CorpusPlan(seed=int(seed), size=int(size), num_identities=n_id, sentences_per_identity=m,
                      test_fraction=float(test_fraction), identity_split=identity_split,
                      sentence_split=sentence_split, identities=identities)
    for i in range(n_id):
        split = identity_split[i]
        irng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 2, i]))
        chosen = sorted(int(s) for s in irng.choice(sentence_split[split], size=m, replace=False))
        idn = identities[i]
        for s in chosen:
            rate = int(np.clip(idn.rate + irng.integers(-12, 13), 80, 450))
            pitch = int(np.clip(idn.pitch + irng.integers(-4, 5), 0, 100))
            plan.samples.append(PlannedSample(sample_id=f"id{i:04d}_s{s:03d}", split=split, identity=i, sentence_id=s,
                                              rate=rate, pitch=pitch, seed=_derive(seed, 3, i, s)))
    return plan


# ---------------------------------------------------------------------------------- building
def _render_sample(renderer: FaceRenderer, ps: PlannedSample, size: int, out: Path, preview: bool) -> dict:
    idn = renderer.identity
    text = SENTENCES[ps.sentence_id]
    t0 = time.perf_counter()
    audio, phonemes = synthesize(text, idn.voice, ps.rate, ps.pitch, seed=ps.seed & 0x7FFFFFFF)
    t1 = time.perf_counter()
    T = audio.num_frames(FPS)
    target = mouth_target(phonemes, audio.duration, FPS, num_frames=T)
    res = renderer.render(target.openness, target.width, seed=ps.seed, fps=FPS)
    t2 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _write_npz(out / "frames.npz", {
        "frames_delta": encode_frames(res.frames),
        "masks": np.packbits(res.masks, axis=-1),
        "face_boxes": res.face_boxes.astype(np.float32),
        "mouth_boxes": res.mouth_boxes.astype(np.float32),
        "mouth_target": target.as_array().astype(np.float32),
        "pose": res.pose.astype(np.float32),
        "blink": res.blink.astype(np.float32),
    })
    save_wav(out / "audio.wav", audio)
    _write_png(out / "reference.png", renderer.reference())
    meta = {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "sample_id": ps.sample_id,
        "split": ps.split,
        "identity_id": ps.identity,
        "sentence_id": ps.sentence_id,
        "text": text,
        "voice": idn.voice,
        "rate": ps.rate,
        "pitch": ps.pitch,
        "seed": ps.seed,
        "fps": FPS,
        "size": size,
        "num_frames": T,
        "sample_rate": audio.sample_rate,
        "num_samples": int(audio.samples.shape[0]),
        "duration": round(audio.duration, 6),
        "phonemes": [[p, round(s, 4), round(e, 4)] for p, s, e in phonemes],
        "mouth_target": target.to_lists(4),
        "face_boxes": _r(res.face_boxes),
        "mouth_boxes": _r(res.mouth_boxes),
        "blink_starts": _r(res.blink_starts),
        "identity": idn.to_dict(),
        "files": {"frames": "frames.npz", "audio": "audio.wav", "reference": "reference.png"},
    }
    if preview:
        from talkfast.io.video import VideoWriter

        with VideoWriter(out / "preview.mp4", fps=FPS, size=(size, size), audio=audio, max_frames=T) as w:
            w.write(res.frames)
        meta["files"]["preview"] = "preview.mp4"
    _write_json(out / "meta.json", meta)
    return {"synth_s": t1 - t0, "render_s": t2 - t1, "write_s": time.perf_counter() - t2, "frames": T}


def _build_identity(job: tuple) -> list[dict]:
    """Render every planned sample of one identity (runs in a worker process when ``workers > 1``)."""
    identity, samples, size, staging, preview = job
    renderer = FaceRenderer(Identity.from_dict(identity), size)
    return [_render_sample(renderer, ps, size, Path(staging) / ps.split / ps.sample_id, preview) for ps in samples]


def build_corpus(out_dir: StrPath, num_identities: int, sentences_per_identity: int, seed: int = 0,
                 size: int = 128, test_fraction: float = 0.2, *, workers: int | None = None,
                 preview: bool = False, photo_backgrounds: bool = False, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build a corpus in ``out_dir``; returns the manifest (also written as ``corpus.json``).

    ``num_identities`` people each speak ``sentences_per_identity`` built-in sentences (different
    ones per person, drawn from their split's pool). ``size`` is the frame side in pixels.
    ``workers`` processes render identities in parallel (default: half the logical CPUs, at most 4,
    for 16 samples or more; otherwise 1); the result does not depend on it. ``preview`` also writes
    ``preview.mp4`` per sample; ``photo_backgrounds`` adds
    scikit-image's bundled pictures as backgrounds (needs scikit-image). An existing corpus in
    ``out_dir`` is replaced only with ``overwrite``; a non-empty folder that is not a corpus never.
    ``progress(done, total)`` is called after every sample.
    """
    if int(size) < 32:
        raise InputError(f"size must be at least 32 pixels, got {size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / "corpus.json").is_file():
            raise OutputError(f"{out} is not empty and holds no corpus; choose an empty or new folder")
        if not overwrite:
            raise OutputError(f"{out} already holds a corpus; pass overwrite=True (--overwrite) to replace it")
    plan = plan_corpus(num_identities, sentences_per_identity, seed, size, test_fraction,
                       photo_backgrounds=photo_backgrounds)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    except OSError as err:
        raise OutputError(f"cannot write to {out}: {err.strerror or err}") from err

    by_identity: dict[int, list[PlannedSample]] = {}
    for ps in plan.samples:
        by_identity.setdefault(ps.identity, []).append(ps)
    total = len(plan.samples)
    done = 0
    stats: dict[str, float] = {"synth_s": 0.0, "render_s": 0.0, "write_s": 0.0, "frames": 0}
    jobs = [(plan.identities[i].to_dict(), by_identity[i], plan.size, str(staging), preview)
            for i in sorted(by_identity)]

    def collect(result: list[dict]) -> None:
        nonlocal done
        for st in result:
            for k, v in st.items():
                stats[k] += v
            done += 1
            if progress is not None:
                progress(done, total)

    if workers is None:
        # half the logical CPUs (hyper-threads do not help this numpy/OpenCV work), at most 4
        workers = max(1, min(4, (os.cpu_count() or 1) // 2)) if total >= 16 else 1
    n_workers = max(1, min(int(workers), len(jobs)))
    t0 = time.perf_counter()
    try:
        if n_workers == 1:
            for job in jobs:
                collect(_build_identity(job))
        else:
            # processes, not threads: rendering holds the GIL. "spawn" is safe whatever the parent runs.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                futures = [pool.submit(_build_identity, job) for job in jobs]
                for fut in as_completed(futures):
                    collect(fut.result())
        manifest = _manifest(plan)
        _write_json(staging / "corpus.json", manifest)
        # publish: remove the old corpus, move the new one in
        for name in (*SPLITS, "corpus.json"):
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for name in (*SPLITS, "corpus.json"):
            if (staging / name).exists():
                os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest["build_stats"] = {k: round(float(v), 3) for k, v in stats.items()}
    manifest["build_stats"]["wall_s"] = round(time.perf_counter() - t0, 3)
    manifest["build_stats"]["workers"] = n_workers
    return manifest


def _manifest(plan: CorpusPlan) -> dict[str, Any]:
    return {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "seed": plan.seed,
        "size": plan.size,
        "fps": FPS,
        "sample_rate": 16000,
        "num_identities": plan.num_identities,
        "sentences_per_identity": plan.sentences_per_identity,
        "test_fraction": plan.test_fraction,
        "sentence_split": plan.sentence_split,
        "identities": {str(i): {"split": plan.identity_split[i], "params": plan.identities[i].to_dict()}
                       for i in range(plan.num_identities)},
        "samples": [{"id": ps.sample_id, "split": ps.split, "identity_id": ps.identity,
                     "sentence_id": ps.sentence_id, "path": f"{ps.split}/{ps.sample_id}"} for ps in plan.samples],
    }


# ---------------------------------------------------------------------------------- loading
def read_manifest(corpus_dir: StrPath) -> dict[str, Any]:
    """The parsed ``corpus.json`` of ``corpus_dir`` (InputError if missing or not a corpus)."""
    p = Path(corpus_dir) / "corpus.json"
    if not p.is_file():
        raise InputError(f"{corpus_dir} is not a talkfast corpus (no corpus.json)")
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {p}: {err}") from err
    if manifest.get("format") != CORPUS_FORMAT:
        raise InputError(f"{p} is not a {CORPUS_FORMAT} manifest")
    return manifest


class Sample:
    """One corpus sample; metadata is read on first use, arrays and audio on every call."""

    def __init__(self, root: Path, sample_id: str, split: str, identity_id: int, sentence_id: int) -> None:
        self.root = Path(root)
        self.id = sample_id
        self.split = split
        self.identity_id = int(identity_id)
        self.sentence_id = int(sentence_id)

    def __repr__(self) -> str:
        return f"Sample({self.id!r}, split={self.split!r})"

    @property
    def text(self) -> str:
        return SENTENCES[self.sentence_id]

    @cached_property
    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "meta.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {self.root / 'meta.json'}: {err}") from err

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fps(self) -> int:
        return int(self.meta["fps"])

    @property
    def mouth_target(self) -> np.ndarray:
        """``(T, 2)`` float32 (openness, width) from the phoneme timing."""
        mt = self.meta["mouth_target"]
        return np.stack([np.asarray(mt["openness"], np.float32), np.asarray(mt["width"], np.float32)], axis=1)

    @property
    def openness(self) -> np.ndarray:
        return np.asarray(self.meta["mouth_target"]["openness"], np.float32)

    @property
    def phonemes(self) -> list[tuple[str, float, float]]:
        return [(str(p), float(s), float(e)) for p, s, e in self.meta["phonemes"]]

    def identity(self) -> Identity:
        return Identity.from_dict(self.meta["identity"])

    def _npz(self) -> np.lib.npyio.NpzFile:
        try:
            return np.load(self.root / "frames.npz", allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise InputError(f"cannot read {self.root / 'frames.npz'}: {err}") from err

    def arrays(self) -> dict[str, np.ndarray]:
        """Every ground-truth array: frames, masks (bool), face/mouth boxes, mouth_target, pose, blink."""
        with self._npz() as z:
            out = {k: z[k] for k in z.files}
        out["frames"] = decode_frames(out.pop("frames_delta"))
        size = out["frames"].shape[2]
        out["masks"] = np.unpackbits(out["masks"], axis=-1, count=size).astype(bool)
        return out

    def frames(self) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 RGB frames."""
        with self._npz() as z:
            return decode_frames(z["frames_delta"])

    def masks(self) -> np.ndarray:
        """``(T, H, W)`` bool head masks."""
        with self._npz() as z:
            packed = z["masks"]
        return np.unpackbits(packed, axis=-1, count=int(self.meta["size"])).astype(bool)

    def face_boxes(self) -> np.ndarray:
        return np.asarray(self.meta["face_boxes"], np.float32)

    def mouth_boxes(self) -> np.ndarray:
        return np.asarray(self.meta["mouth_boxes"], np.float32)

    def audio(self) -> Audio:
        return load_audio(self.root / "audio.wav", 16000, allow_silent=True)

    def reference(self) -> np.ndarray:
        """The neutral portrait, ``(H, W, 3)`` uint8."""
        with Image.open(self.root / "reference.png") as im:
            return np.asarray(im.convert("RGB"))

    def regions(self):
        """:class:`~talkfast.face.detect.FaceRegions` of the reference pose (the first frame), exact
        from the renderer: what training and the quality report condition on instead of detection."""
        from talkfast.face.detect import Box, FaceRegions

        size = int(self.meta["size"])
        return FaceRegions(Box(*self.face_boxes()[0].tolist()), Box(*self.mouth_boxes()[0].tolist()),
                           (size, size), True, "corpus")

    @property
    def audio_path(self) -> Path:
        return self.root / "audio.wav"

    @property
    def reference_path(self) -> Path:
        return self.root / "reference.png"


def load_corpus(corpus_dir: StrPath, split: str | None = "train") -> list[Sample]:
    """The samples of ``split`` (``"train"``, ``"test"``, or ``None``/``"all"`` for both), sorted by id."""
    if split not in (None, "all", *SPLITS):
        raise InputError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = Path(corpus_dir)
    manifest = read_manifest(root)
    out = []
    for rec in manifest["samples"]:
        if split in (None, "all") or rec["split"] == split:
            out.append(Sample(root / rec["path"], rec["id"], rec["split"], rec["identity_id"], rec["sentence_id"]))
    out.sort(key=lambda s: (s.split, s.id))
    return out


def corpus_summary(corpus_dir: StrPath) -> dict[str, dict[str, Any]]:
    """Per split: samples, identities, sentences and total seconds (from the manifest and metas)."""
    manifest = read_manifest(corpus_dir)
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        recs = [r for r in manifest["samples"] if r["split"] == split]
        seconds = 0.0
        for r in recs:
            try:
                meta = json.loads((Path(corpus_dir) / r["path"] / "meta.json").read_text(encoding="utf-8"))
                seconds += float(meta.get("duration", 0.0))
            except (OSError, json.JSONDecodeError):
                pass
        out[split] = {
            "samples": len(recs),
            "identities": len({r["identity_id"] for r in recs}),
            "sentences": len({r["sentence_id"] for r in recs}),
            "seconds": round(seconds, 2),
        }
    return out
