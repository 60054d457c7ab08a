"""The inputs of the pipeline benchmark: :class:`BenchCase` (portrait, speech, optional ground
truth and lip-sync metric), built from the bundled example or a synthetic-corpus split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import examples

EXAMPLE_PORTRAIT, EXAMPLE_SPEECH = examples.PORTRAIT, examples.SPEECH


@dataclass
class BenchCase:
    """One input of the pipeline benchmark. ``image``/``audio``: paths, or a PIL image and an
    :class:`~talkfast.io.audio.Audio`. ``ground_truth``: the real video (T, 3, H, W), float in
    [0, 1] or uint8, when known (resized to the generated size if it differs; compared over the
    common number of frames). ``lipsync_fn(frames) -> float``: the corpus's lip-sync
    metric for this case's audio (higher is better), when available."""

    name: str
    image: Any
    audio: Any
    ground_truth: torch.Tensor | None = None
    lipsync_fn: Callable[[torch.Tensor], float] | None = None
    regions: Any = None  # known face/lip boxes of the portrait (corpus samples), instead of detection


def trim_audio(audio, seconds: float | None):
    """The first ``seconds`` of ``audio`` (all of it when None or longer)."""
    from ..io.audio import Audio

    if seconds is None:
        return audio
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    n = max(1, round(seconds * audio.sample_rate))
    if n >= len(audio.samples):
        return audio
    return Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels, audio.path)


def example_case(seconds: float | None = None, name: str = "example") -> BenchCase:
    """The bundled portrait and speech (its first ``seconds``); no ground truth."""
    from ..io.audio import load_audio
    from ..io.image import load_image

    return BenchCase(name, load_image(EXAMPLE_PORTRAIT), trim_audio(load_audio(EXAMPLE_SPEECH), seconds))


def corpus_cases(corpus_dir: str | Path, split: str = "test", limit: int | None = None,
                 offset: int = 0) -> list[BenchCase]:
    """Cases from a synthetic corpus folder (:mod:`talkfast.data.corpus`): per sample its
    neutral reference portrait and its speech as inputs, its frames as ground truth (uint8,
    resized to the generated size when they differ) and :func:`talkfast.eval.lipsync.lipsync_score`
    against its phoneme-derived mouth target as the lip-sync metric (face boxes scaled to the
    generated size). ``limit``: at most that many samples, spread over identities; ``offset``:
    skip the first that many of that order (``offset`` = a tune's ``limit`` gives samples of other
    identities than the tune's, while the split has more identities than both together)."""
    from ..errors import InputError

    try:
        from ..data.corpus import load_corpus
        from .lipsync import lipsync_score
    except ImportError as err:
        raise InputError(f"the synthetic corpus support is not available: {err}") from err
    from .quality import select_samples

    if offset < 0:
        raise ValueError(f"--offset must be >= 0, got {offset}")
    samples = select_samples(load_corpus(corpus_dir, split), None)[offset:]  # spread over identities
    samples = samples if limit is None else samples[: max(0, int(limit))]
    if not samples:
        raise InputError(f"no {split!r} samples in {corpus_dir}" + (f" after the first {offset}" if offset else ""))
    cases = []
    for sample in samples:
        frames = sample.frames()  # (T, H, W, 3) uint8
        truth = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        cases.append(BenchCase(sample.id, sample.reference_path, sample.audio(), truth,
                               _corpus_lipsync(lipsync_score, sample.face_boxes(), sample.openness, frames.shape[1]),
                               regions=sample.regions()))
    return cases


def _corpus_lipsync(score, boxes, target, truth_height: int) -> Callable[[torch.Tensor], float]:
    def lipsync(video: torch.Tensor) -> float:
        n = min(video.shape[0], len(boxes))  # a trimmed run (--seconds) covers the first frames only
        arr = (video[:n].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return float(score(arr, boxes[:n] * (arr.shape[1] / truth_height), target[:n]))

    return lipsync


def one_clip(audio, frames: int, fps: int):
    """The audio of exactly the first clip (``frames`` frames at ``fps``), or all if shorter."""
    from ..io.audio import Audio

    n = (frames * audio.sample_rate) // fps  # floor: ceil(n * fps / sr) == frames
    if n >= len(audio.samples) or n < 1:
        return audio
    return Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels, audio.path)



def _load_case(case: BenchCase) -> tuple[Any, Any]:
    from ..io.audio import load_audio
    from ..io.image import load_image

    image = load_image(case.image) if isinstance(case.image, (str, Path)) else case.image
    audio = load_audio(case.audio) if isinstance(case.audio, (str, Path)) else case.audio
    return image, audio

