"""Speech with phoneme timing from espeak-ng (libespeak-ng through ctypes).

:func:`synthesize` runs libespeak-ng in a short-lived worker process
(:mod:`talkfast.data._espeak_worker`, standard library only): the library keeps global state
between utterances (voice-variant settings leak into the next voice, noise generators and filter
memories carry over), so one process per utterance is what makes an utterance depend only on its
own arguments. That costs about 30-60 ms per utterance.

The worker initialises espeak-ng in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with
``espeakINITIALIZE_PHONEME_EVENTS``, collects the 22.05 kHz int16 samples and the events from the
synth callback, and this module resamples the audio to 16 kHz (soxr, HQ) and turns phoneme events
into ``(phoneme, start_s, end_s)`` intervals: a phoneme ends where the next event starts. Pauses
(espeak's ``_``, ``_:``, ... mnemonics) are dropped, so gaps between intervals are silence.
Phoneme names are espeak's own ASCII mnemonics (``h @ l oU``, ``aI``, ``t#`` ...); see
:mod:`talkfast.data.visemes` for their mouth shapes.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

from talkfast.errors import InputError
from talkfast.io.audio import Audio

__all__ = [
    "BASE_VOICES",
    "VARIANTS",
    "SpeechError",
    "SpeechResult",
    "espeak_available",
    "synthesize",
    "synthesize_full",
]

#: Output sample rate of :func:`synthesize`.
SAMPLE_RATE = 16000
#: English espeak-ng voices used by the corpus generator (names that espeak_SetVoiceByName accepts:
#: voice file identifiers, so British English is "en", not "en-gb").
BASE_VOICES = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
#: Voice variants (``voice+variant``) shipped in espeak-ng-data/voices/!v, with the speaker's apparent sex.
VARIANTS = {
    "m1": "m", "m2": "m", "m3": "m", "m4": "m", "m5": "m", "m6": "m", "m7": "m",
    "f1": "f", "f2": "f", "f3": "f", "f4": "f", "f5": "f",
    "klatt": "m", "klatt2": "m", "klatt3": "m", "klatt4": "f", "klatt6": "f",
    "Alex": "m", "Andy": "m", "Annie": "f", "anika": "f", "aunty": "f", "belinda": "f",
    "david": "m", "edward": "m", "grandma": "f", "grandpa": "m", "linda": "f", "max": "m",
}
_WORKER = Path(__file__).with_name("_espeak_worker.py")
_WORKER_TIMEOUT_S = 120
_EVENT_WORD, _EVENT_END, _EVENT_PHONEME = 1, 5, 7
_INSTALL_HINT = "espeak-ng not installed: apt-get install espeak-ng"


class SpeechError(InputError):
    """espeak-ng is missing or refused the request (unknown voice, synthesis failure)."""


@dataclass(frozen=True, eq=False)
class SpeechResult:
    """Everything one utterance produced: 16 kHz audio, phonemes and word onsets.

    ``words`` holds ``(text_position, start_s)`` pairs (1-based character position of the word).
    """

    audio: Audio
    phonemes: list[tuple[str, float, float]]
    words: list[tuple[int, float]]
    voice: str
    rate: int
    pitch: int


@lru_cache(maxsize=1)
def _library_name() -> str | None:
    name = ctypes.util.find_library("espeak-ng")
    if name:
        return name
    try:
        ctypes.CDLL("libespeak-ng.so.1")
        return "libespeak-ng.so.1"
    except OSError:
        return None


def espeak_available() -> bool:
    """True when libespeak-ng can be loaded on this machine."""
    return _library_name() is not None


def synthesize(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, seed: int = 0
               ) -> tuple[Audio, list[tuple[str, float, float]]]:
    """Speak ``text`` with espeak-ng; return (16 kHz :class:`Audio`, ``[(phoneme, start_s, end_s)]``).

    ``voice`` is an espeak-ng voice name, optionally with a variant (``"en-gb+f3"``); ``rate`` is in
    words per minute (80..450) and ``pitch`` in 0..100. ``seed`` seeds the C library's ``rand()``
    in the worker process (espeak draws noise from it); same arguments give the same samples.
    Phoneme intervals are sorted, non-overlapping and lie inside the audio. Raises
    :class:`SpeechError` (an :class:`InputError`) when espeak-ng is missing, the voice is unknown or
    the text produces no speech.
    """
    result = synthesize_full(text, voice=voice, rate=rate, pitch=pitch, seed=seed)
    return result.audio, result.phonemes


def synthesize_full(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, seed: int = 0,
                    pitch_range: int | None = None) -> SpeechResult:
    """Like :func:`synthesize`, returning a :class:`SpeechResult` with word onsets as well."""
    if not isinstance(text, str) or not text.strip():
        raise SpeechError("cannot synthesise empty text")
    if not 80 <= int(rate) <= 450:
        raise SpeechError(f"espeak-ng rate must be in 80..450 words per minute, got {rate}")
    if not 0 <= int(pitch) <= 100:
        raise SpeechError(f"espeak-ng pitch must be in 0..100, got {pitch}")
    library = _library_name()
    if library is None:
        raise SpeechError(_INSTALL_HINT)
    request = {"text": text, "voice": voice, "rate": int(rate), "pitch": int(pitch), "seed": int(seed),
               "range": None if pitch_range is None else int(pitch_range), "library": library}
    header, pcm = _run_worker(request)
    src_rate = int(header["sample_rate"])
    samples16 = np.frombuffer(pcm, dtype=np.int16)
    if samples16.size == 0:
        raise SpeechError(f"espeak-ng produced no audio for {text!r}")
    total_s = samples16.size / src_rate
    audio = soxr.resample(samples16.astype(np.float64) / 32768.0, src_rate, SAMPLE_RATE, quality="HQ")
    audio = Audio(samples=np.ascontiguousarray(audio, dtype=np.float32), sample_rate=SAMPLE_RATE,
                  source_sample_rate=src_rate, source_channels=1, path=None)
    phonemes = _phoneme_intervals(header["events"], src_rate, total_s)
    words = [(int(pos), int(sample) / src_rate) for etype, sample, pos, _ in header["events"] if etype == _EVENT_WORD]
    return SpeechResult(audio=audio, phonemes=phonemes, words=words, voice=voice, rate=int(rate), pitch=int(pitch))


def _run_worker(request: dict) -> tuple[dict, bytes]:
    cmd = [sys.executable, "-I", "-S", str(_WORKER)]
    try:
        proc = subprocess.run(cmd, input=json.dumps(request).encode("utf-8"), capture_output=True,
                              timeout=_WORKER_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SpeechError(f"espeak-ng worker failed: {err}") from err
    head, sep, pcm = proc.stdout.partition(b"\n")
    try:
        header = json.loads(head.decode("utf-8")) if sep else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if header is None:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SpeechError(f"espeak-ng worker crashed (exit code {proc.returncode})"
                          + (f": {detail[-1]}" if detail else ""))
    if "error" in header:
        if header.get("kind") == "missing":
            raise SpeechError(_INSTALL_HINT)
        raise SpeechError(f"espeak-ng: {header['error']}")
    if len(pcm) != 2 * int(header["num_samples"]):
        raise SpeechError("espeak-ng worker returned truncated audio")
    return header, pcm


def _is_pause(name: str) -> bool:
    return not name or name.startswith("_") or name in ("||", "|", "%")


def _phoneme_intervals(events: list, src_rate: int, total_s: float) -> list[tuple[str, float, float]]:
    """Phoneme events -> [(name, start_s, end_s)], pauses dropped, clipped to the audio."""
    # Boundaries: every phoneme event starts a segment; a clause end closes the one before it.
    marks: list[tuple[float, str | None]] = []
    for etype, sample, _pos, value in events:
        t = min(max(int(sample) / src_rate, 0.0), total_s)
        if etype == _EVENT_PHONEME:
            marks.append((t, str(value)))
        elif etype == _EVENT_END:
            marks.append((t, None))
    out: list[tuple[str, float, float]] = []
    for i, (start, name) in enumerate(marks):
        if name is None or _is_pause(name):
            continue
        end = total_s
        for later, _ in marks[i + 1:]:
            if later > start:
                end = later
                break
        else:
            end = total_s
        if out and start < out[-1][2]:
            start = out[-1][2]
        if end > start:
            out.append((name, round(start, 6), round(end, 6)))
    return out
