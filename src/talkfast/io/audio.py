"""Audio loading and saving.

:func:`load_audio` turns any readable audio file into a mono float32 waveform at a fixed sample
rate, rejecting inputs that cannot drive a talking head (missing, corrupt, empty, silent, too long).
Files that ``soundfile`` (libsndfile) cannot read are decoded with the ffmpeg binary shipped by
``imageio-ffmpeg``, which covers m4a/aac, opus in webm, audio tracks of videos, and so on.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from talkfast.errors import InputError, OutputError

__all__ = ["Audio", "load_audio", "save_wav"]

#: Below this peak amplitude a file is considered silent.
SILENT_PEAK = 1e-4
#: Below this RMS level (in dBFS) a file is considered silent.
SILENT_RMS_DBFS = -70.0
#: Upper bound on how long the ffmpeg fallback decoder may run, in seconds.
_FFMPEG_TIMEOUT_S = 600

StrPath = str | os.PathLike[str]


@dataclass(frozen=True, eq=False)
class Audio:
    """A mono waveform plus a few facts about the file it came from.

    ``samples`` is a 1-D float32 array, nominally in [-1, 1], at ``sample_rate`` Hz.
    ``source_sample_rate`` and ``source_channels`` describe the file before resampling/downmixing.
    (``eq=False``: comparing numpy arrays with ``==`` is ambiguous, so instances compare by identity.)
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.samples, np.ndarray) or self.samples.ndim != 1:
            raise ValueError("Audio.samples must be a 1-D numpy array")
        if self.samples.dtype != np.float32:
            raise ValueError(f"Audio.samples must be float32, got {self.samples.dtype}")
        if int(self.sample_rate) <= 0:
            raise ValueError(f"Audio.sample_rate must be positive, got {self.sample_rate}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def num_frames(self, fps: int | float | Fraction) -> int:
        """Number of video frames at ``fps`` needed to cover the whole waveform (rounded up).

        Computed with exact rational arithmetic, so e.g. 2 s at 25 fps is exactly 50, never 51.
        """
        fps_q = Fraction(fps)
        if fps_q <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return math.ceil(Fraction(len(self.samples)) * fps_q / self.sample_rate)


def load_audio(
    path: StrPath,
    sample_rate: int = 16000,
    *,
    allow_silent: bool = False,
    max_seconds: float | None = None,
) -> Audio:
    """Load ``path`` as mono float32 at ``sample_rate`` Hz.

    Multi-channel audio is downmixed by averaging the channels; integer PCM is scaled to [-1, 1];
    other rates are resampled with soxr (HQ). Raises :class:`InputError` if the file is missing,
    unreadable, empty, contains NaN/inf, is silent (unless ``allow_silent``) or is longer than
    ``max_seconds``.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise InputError(f"Audio file not found: {name}")
    if p.is_dir():
        raise InputError(f"Audio path is a directory, not a file: {name}")

    data, src_rate = _read_any(p, name, max_seconds)
    src_channels = data.shape[1]
    if data.shape[0] == 0:
        raise InputError(f"Audio file {name} is empty (contains no samples).")
    if not np.all(np.isfinite(data)):
        raise InputError(f"Audio file {name} contains invalid samples (NaN or infinity).")
    src_seconds = data.shape[0] / src_rate
    if max_seconds is not None and src_seconds > max_seconds:
        raise InputError(
            f"Audio file {name} is {src_seconds:.1f} s long, more than the {max_seconds:g} s limit; "
            "trim it or raise the limit."
        )

    mono = data.mean(axis=1, dtype=np.float64) if src_channels > 1 else data[:, 0].astype(np.float64)
    if not allow_silent:
        peak = float(np.max(np.abs(mono)))
        rms = float(np.sqrt(np.mean(np.square(mono))))
        rms_db = 20.0 * math.log10(rms) if rms > 0 else -math.inf
        if peak < SILENT_PEAK or rms_db < SILENT_RMS_DBFS:
            raise InputError(
                f"Audio file {name} is silent (peak {peak:.2g}, RMS {rms_db:.0f} dBFS); "
                "provide a recording with speech."
            )

    if src_rate != sample_rate:
        mono = soxr.resample(mono, src_rate, sample_rate, quality="HQ")
    samples = np.ascontiguousarray(mono, dtype=np.float32)
    if samples.size == 0:
        raise InputError(f"Audio file {name} is too short to resample to {sample_rate} Hz.")
    return Audio(
        samples=samples,
        sample_rate=int(sample_rate),
        source_sample_rate=int(src_rate),
        source_channels=int(src_channels),
        path=name,
    )


def _read_any(p: Path, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Read ``p`` as a (frames, channels) float32 array, via soundfile or else ffmpeg."""
    try:
        return _read_soundfile(p)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_err:
        first_error = str(sf_err)
    except OSError as err:
        raise InputError(f"Audio file {name} cannot be opened: {err.strerror or err}") from err
    try:
        return _read_ffmpeg(p, max_seconds)
    except _DecodeError as err:
        detail = f" ({err})" if str(err) else f" ({first_error})"
        raise InputError(
            f"Audio file {name} is not a readable audio file{detail}; "
            "use WAV, FLAC, MP3, OGG or M4A."
        ) from err


def _read_soundfile(p: Path) -> tuple[np.ndarray, int]:
    """Read with libsndfile; integer PCM comes back scaled to [-1, 1]."""
    data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    return data, int(rate)


class _DecodeError(Exception):
    """ffmpeg could not decode an audio stream from the file."""


def _read_ffmpeg(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg into a temporary float WAV, then read that.

    Going through a WAV file (instead of a raw pipe) keeps the native channel count and rate,
    so downmixing and resampling are done the same way as for files soundfile reads directly.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # binary missing or unusable
        raise _DecodeError(f"ffmpeg unavailable: {err}") from err
    with tempfile.TemporaryDirectory(prefix="talkfast-audio-") as tmp:
        out = Path(tmp) / "decoded.wav"
        cmd = [exe, "-nostdin", "-hide_banner", "-v", "error", "-i", str(p)]
        if max_seconds is not None:
            # Decode just past the limit: enough to detect "too long" without decoding hours.
            cmd += ["-t", f"{max_seconds + 1.0:.3f}"]
        cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", "pcm_f32le", "-rf64", "auto", "-y", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise _DecodeError(f"ffmpeg failed: {err}") from err
        if proc.returncode != 0 or not out.exists():
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            raise _DecodeError(lines[-1] if lines else f"ffmpeg exit code {proc.returncode}")
        try:
            return _read_soundfile(out)
        except (RuntimeError, TypeError, ValueError, OSError) as err:
            raise _DecodeError(str(err)) from err


def save_wav(path: StrPath, audio_or_samples: Audio | np.ndarray, sample_rate: int | None = None) -> Path:
    """Write mono (or (frames, channels)) audio as a 16-bit PCM WAV; returns the path.

    ``sample_rate`` is taken from the :class:`Audio` when one is given; it is required for a raw
    array. Samples are clipped to [-1, 1] before quantisation.
    """
    if isinstance(audio_or_samples, Audio):
        samples = audio_or_samples.samples
        rate = audio_or_samples.sample_rate if sample_rate is None else sample_rate
    else:
        samples = np.asarray(audio_or_samples)
        if sample_rate is None:
            raise ValueError("save_wav needs sample_rate when given a raw array")
        rate = sample_rate
    if samples.ndim not in (1, 2):
        raise ValueError(f"save_wav expects 1-D or (frames, channels) samples, got shape {samples.shape}")
    pcm = np.clip(np.nan_to_num(samples.astype(np.float32), nan=0.0), -1.0, 1.0)
    p = Path(path)
    try:
        sf.write(str(p), pcm, int(rate), subtype="PCM_16", format="WAV")
    except (RuntimeError, OSError) as err:
        raise OutputError(f"Cannot write WAV file {p}: {err}") from err
    return p
