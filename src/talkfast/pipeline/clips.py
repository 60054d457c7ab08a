"""A generation as an iterator of clips: what :meth:`TalkingHeadPipeline.stream` (and EchoMimic's,
MEMO's through the main loop) yields, and how ``generate`` consumes it.

There is one generation loop per family, written as a generator: ``stream`` yields every clip as
soon as it is decoded (and handed to the file writer, when there is one), and its return value (the
``value`` of the final ``StopIteration``) is the :class:`~.generate.GenerationResult`;
``generate`` is :func:`run_to_end` over that same generator. The frames a consumer of ``stream``
gets are therefore the frames the file path writes, in the same order.

Leaving the iteration early (``break``, an exception in the consumer) and then closing the
iterator (``close()``, ``contextlib.closing``, or letting it be collected) aborts the generation as
an exception inside it would: the file writer's temporaries are removed, the accelerator detached.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Generator

import numpy as np
import torch


@dataclass
class Clip:
    """One piece of the video, final: no later step of the generation changes its frames.

    ``frames`` (T, 3, H, W) in [0, 1] (float, on the pipeline's device), the video frames
    ``start_frame`` to ``end_frame`` - 1 at ``fps``. The matching audio is the span
    ``audio_start`` to ``audio_end`` (sample indices at ``sample_rate`` of the driving audio as the
    video file carries it: ``ceil(frame * rate / fps)``, so consecutive clips tile the file's
    audio track without gap or overlap) and ``audio`` holds those samples (mono float32, silence
    past the recording's end). ``index`` counts the clips from 0; ``elapsed`` is the wall time
    from the start of the generation until the clip was ready, ``seconds`` the timings so far
    (the generation's per-stage seconds, a copy)."""

    index: int
    frames: torch.Tensor
    start_frame: int
    fps: int
    sample_rate: int
    audio_start: int
    audio_end: int
    audio: np.ndarray
    elapsed: float
    seconds: dict = field(default_factory=dict)

    @property
    def end_frame(self) -> int:
        return self.start_frame + int(self.frames.shape[0])

    @property
    def start_seconds(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_seconds(self) -> float:
        return self.end_frame / self.fps


def audio_sample(frame: int, fps: int, rate: int) -> int:
    """The first audio sample of video frame ``frame``: ``ceil(frame * rate / fps)`` (the video
    writer's audio track holds ``audio_sample(frames)`` samples for ``frames`` frames)."""
    return math.ceil(Fraction(frame) * rate / fps)


def make_clip(index: int, frames: torch.Tensor, start_frame: int, fps: int, audio, elapsed: float,
              seconds: dict) -> Clip:
    """The :class:`Clip` of ``frames`` starting at ``start_frame``, with its span of ``audio``
    (an :class:`~talkfast.io.audio.Audio`)."""
    rate = int(audio.sample_rate)
    a = audio_sample(start_frame, fps, rate)
    b = audio_sample(start_frame + int(frames.shape[0]), fps, rate)
    span = np.zeros(b - a, dtype=np.float32)
    have = audio.samples[a:b]
    span[: len(have)] = have
    return Clip(index, frames, start_frame, fps, rate, a, b, span, elapsed, _copy(seconds))


def _copy(seconds: dict) -> dict:
    return {k: list(v) if isinstance(v, list) else v for k, v in seconds.items()}


def run_to_end(clips: Generator, on_clip: Callable[[torch.Tensor], None] | None = None):
    """Drive a ``stream`` generator to its end, handing each clip's frames to ``on_clip``; returns
    the generator's return value (the GenerationResult). An exception (Ctrl-C included) in
    ``on_clip`` closes the generator, which aborts the generation, then propagates."""
    with contextlib.closing(clips):
        while True:
            try:
                clip = next(clips)
            except StopIteration as stop:
                return stop.value
            if on_clip is not None:
                on_clip(clip.frames)
