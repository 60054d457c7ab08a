"""Audio loading and saving.

:func:`load_audio` turns any readable audio file into a mono float32 waveform at a fixed sample
rate, rejecting inputs that cannot drive a talking head (missing, corrupt, empty, silent, too long).
Files that ``soundfile`` (libsndfile) cannot read are decoded with the ffmpeg binary shipped by
``imageio-ffmpeg``, which covers m4a/aac, opus in webm, audio tracks of videos, and so on.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

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
    other rates are resampled with soxr (HQ); a (float) file whose samples go beyond full scale is
    scaled to peak 1 (with a warning). Raises :class:`InputError` if the file is missing,
    unreadable, empty, contains NaN/inf, is silent (unless ``allow_silent``) or is longer than
    ``max_seconds``.

    The file is read and resampled in blocks, so the memory needed is the returned waveform
    (4 bytes per output sample: 230 MB for an hour at 16 kHz) plus a constant, whatever the
    source rate and channel count.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise InputError(f"Audio file not found: {name}")
    if p.is_dir():
        raise InputError(f"Audio path is a directory, not a file: {name}")

    try:
        return _decode_stream(_open_soundfile(p), name, int(sample_rate), allow_silent, max_seconds)
    except _DecodeError as sf_err:
        first_error = str(sf_err)
    except OSError as err:
        raise InputError(f"Audio file {name} cannot be opened: {err.strerror or err}") from err
    with tempfile.TemporaryDirectory(prefix="talkfast-audio-") as tmp:
        try:
            wav = _ffmpeg_to_wav(p, max_seconds, Path(tmp))
            return _decode_stream(_open_soundfile(wav), name, int(sample_rate), allow_silent, max_seconds)
        except (_DecodeError, OSError) as err:
            detail = f" ({err})" if str(err) else f" ({first_error})"
            raise InputError(
                f"Audio file {name} is not a readable audio file{detail}; "
                "use WAV, FLAC, MP3, OGG or M4A."
            ) from err


#: Frames read (and resampled) at a time: memory use does not depend on the file's length.
_BLOCK_FRAMES = 1 << 18


def with_room(buf: np.ndarray, used: int, more: int) -> np.ndarray:
    """``buf`` (its first ``used`` entries kept) with room for ``more`` after them: itself, or a
    copy at least twice as long (a view taken of the old array stays as it was)."""
    if used + more <= len(buf):
        return buf
    grown = np.empty(max(2 * len(buf), used + more), buf.dtype)
    grown[:used] = buf[:used]
    return grown


def check_heard(what: str, n_in: int, peak: float, sum_sq: float, *, allow_silent: bool = False) -> None:
    """The end-of-input checks of a decoded recording (``what``: "Audio file NAME"): ``n_in``
    source frames whose mono downmix peaks at ``peak`` with ``sum_sq`` the sum of its squares.
    Empty, or (unless ``allow_silent``) silent, raises :class:`InputError`."""
    if n_in == 0:
        raise InputError(f"{what} is empty (contains no samples).")
    if allow_silent:
        return
    rms = math.sqrt(sum_sq / n_in)
    rms_db = 20.0 * math.log10(rms) if rms > 0 else -math.inf
    if peak < SILENT_PEAK or rms_db < SILENT_RMS_DBFS:
        raise InputError(f"{what} is silent (peak {peak:.2g}, RMS {rms_db:.0f} dBFS); provide a recording with speech.")


def _open_soundfile(p: Path) -> sf.SoundFile:
    """Open ``p`` with libsndfile; a format it cannot read raises :class:`_DecodeError`."""
    try:
        return sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise _DecodeError(str(err)) from err


def _decode_stream(
    f: sf.SoundFile, name: str, sample_rate: int, allow_silent: bool, max_seconds: float | None
) -> Audio:
    """Read ``f`` block by block: downmix, check, resample (soxr HQ, streamed) into one float32 array.

    Besides the returned 16 kHz (``sample_rate``) waveform, memory is bounded by one block, however
    long the file: the source-rate data, float64 downmix and resampler input are never held whole.
    The result is identical, sample for sample, to resampling the whole downmixed file at once.
    Read errors raise :class:`_DecodeError` (the caller then tries ffmpeg); unusable content
    (empty, NaN/inf, silent, too long) raises :class:`InputError`.
    """
    with f:
        src_rate, channels = int(f.samplerate), int(f.channels)
        known = int(f.frames) if f.seekable() and 0 <= f.frames < 1 << 50 else None
        limit = None if max_seconds is None else math.floor(max_seconds * src_rate)
        resampler = None
        if src_rate != sample_rate:
            resampler = soxr.ResampleStream(src_rate, sample_rate, 1, dtype="float64", quality="HQ")
        capacity = 1 << 20
        if known is not None:  # soxr's output length: round(frames * out / in), halves up
            capacity = max(1, (2 * known * sample_rate + src_rate) // (2 * src_rate) + 1)
        out = np.empty(capacity, np.float32)
        n_in = n_out = 0
        peak = sum_sq = 0.0
        while True:
            try:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
                raise _DecodeError(str(err)) from err
            last = len(block) < _BLOCK_FRAMES
            if not np.all(np.isfinite(block)):
                raise InputError(f"Audio file {name} contains invalid samples (NaN or infinity).")
            n_in += len(block)
            if limit is not None and n_in > limit:
                seconds = max(n_in, known or 0) / src_rate
                raise InputError(
                    f"Audio file {name} is {seconds:.1f} s long, more than the {max_seconds:g} s limit; "
                    "trim it or raise the limit."
                )
            mono = block.mean(axis=1, dtype=np.float64) if channels > 1 else block[:, 0].astype(np.float64)
            if len(mono):
                peak = max(peak, float(np.max(np.abs(mono))))
                sum_sq += float(np.dot(mono, mono))
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            out = with_room(out, n_out, len(mono))  # the length was unknown or wrong: grow
            out[n_out : n_out + len(mono)] = mono
            n_out += len(mono)
            if last:
                break
    check_heard(f"Audio file {name}", n_in, peak, sum_sq, allow_silent=allow_silent)
    if n_out == 0:
        raise InputError(f"Audio file {name} is too short to resample to {sample_rate} Hz.")
    out.resize(n_out, refcheck=False)  # in place: no second full-length copy
    if peak > 1.0:  # a float file beyond full scale (speech x 1e20 overflows the features): normalise
        _scale_in_place(out, 1.0 / peak)
        if not np.all(np.isfinite(out)):
            raise InputError(f"Audio file {name} has samples too large to process (peak {peak:.3g}); "
                             "normalise it to [-1, 1].")
        (log.warning if peak > 2.0 else log.info)(  # lossy codecs overshoot a little: not worth a warning
            "%s: samples reach %.3g, beyond full scale; normalised to peak 1", name, peak)
    return Audio(
        samples=out,
        sample_rate=sample_rate,
        source_sample_rate=src_rate,
        source_channels=channels,
        path=name,
    )


def _scale_in_place(x: np.ndarray, factor: float) -> None:
    """``x *= factor`` computed in float64 block by block (no full-length float64 copy)."""
    for start in range(0, len(x), _BLOCK_FRAMES):
        block = x[start : start + _BLOCK_FRAMES]
        block[:] = block.astype(np.float64) * factor


class _DecodeError(Exception):
    """ffmpeg could not decode an audio stream from the file."""


def _ffmpeg_to_wav(p: Path, max_seconds: float | None, folder: Path) -> Path:
    """Decode the first audio stream with ffmpeg into a float WAV in ``folder``; returns its path.

    Going through a WAV file (instead of a raw pipe) keeps the native channel count and rate,
    so downmixing and resampling are done the same way as for files soundfile reads directly.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # binary missing or unusable
        raise _DecodeError(f"ffmpeg unavailable: {err}") from err
    out = folder / "decoded.wav"
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
        text = proc.stderr.decode(errors="replace")
        if "matches no streams" in text:  # ffmpeg's last line would be "Error opening output files"
            raise _DecodeError("it has no audio stream")
        lines = text.strip().splitlines()
        raise _DecodeError(lines[-1] if lines else f"ffmpeg exit code {proc.returncode}")
    return out


def save_wav(
    path: StrPath, audio_or_samples: Audio | np.ndarray, sample_rate: int | None = None, *, length: int | None = None
) -> Path:
    """Write mono (or (frames, channels)) audio as a 16-bit PCM WAV; returns the path.

    ``sample_rate`` is taken from the :class:`Audio` when one is given; it is required for a raw
    array. Samples are clipped to [-1, 1] before quantisation (NaN becomes 0). ``length``: write
    exactly this many frames, trimming the samples or padding them with silence. The samples are
    converted and written in blocks, so a long recording is never copied whole.
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
    total = len(samples) if length is None else int(length)
    if total < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    p = Path(path)
    try:
        with sf.SoundFile(str(p), "w", samplerate=int(rate), channels=channels, subtype="PCM_16", format="WAV") as f:
            for start in range(0, total, _BLOCK_FRAMES):
                stop = min(total, start + _BLOCK_FRAMES)
                block = np.asarray(samples[start:stop], dtype=np.float32)
                if len(block) < stop - start:  # past the end of the samples: silence
                    pad = np.zeros((stop - start - len(block), *samples.shape[1:]), np.float32)
                    block = np.concatenate([block, pad])
                f.write(np.clip(np.nan_to_num(block, nan=0.0), -1.0, 1.0))
    except (RuntimeError, OSError) as err:
        raise OutputError(f"Cannot write WAV file {p}: {err}") from err
    return p
