"""Speech that arrives while the generation runs: a WAV read from stdin, a named pipe or a file
that is still being written (``talkfast generate -a -``).

:class:`LiveAudio` parses a RIFF/WAVE stream itself (PCM 16/32-bit, IEEE float 32/64-bit, plain or
WAVE_FORMAT_EXTENSIBLE; a header whose RIFF/data size is unknown, 0 or 0xFFFFFFFF, as streaming
writers such as ``ffmpeg -f wav pipe:`` and ``sox -t wav -`` write it) and turns what has arrived
into the same mono float32 waveform :func:`~talkfast.io.audio.load_audio` makes of the complete
file: the same integer scaling as libsndfile (``x / 2**(bits-1)``), the same float64 downmix, the
same streamed soxr HQ resampler, so the samples so far are a prefix of the complete file's, sample
for sample. :meth:`LiveAudio.wait` reads until ``n`` output samples are there (or the input ended)
and returns them as an :class:`~talkfast.io.audio.Audio` snapshot.

Where the input ends:

* stdin, a named pipe (any non-regular file): at end of file;
* a regular file: when its data chunk reaches the size the header declares, or, when the header
  leaves the size open, when the file has not grown for ``idle`` seconds (``--audio-idle``,
  default :data:`DEFAULT_IDLE_S`); the header is read again then, as a writer that seeks back to
  fill in the sizes when it finishes (ffmpeg on a file) may have done.

An input that stops before the size its header declares, or in the middle of a sample, is an
:class:`~talkfast.errors.InputError` (so is garbage, a format other than the above, NaN/inf,
samples beyond full scale — a complete float file would be normalised to peak 1, which a stream
cannot be once clips are made —, empty or silent input): the generation aborts and writes no
video, never a silently truncated one.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import sys
import time

import numpy as np
import soxr

from talkfast.errors import InputError

from .audio import Audio, check_heard, load_audio, with_room

__all__ = ["DEFAULT_IDLE_S", "LiveAudio", "is_live_input", "open_live", "read_audio"]

#: A regular file whose header leaves its length open ends after this many seconds without growth.
DEFAULT_IDLE_S = 5.0
#: Data sizes at or above this are "unknown" (streaming writers put 0xFFFFFFFF or about 2 GiB there).
_OPEN_SIZE = 0x7FFF0000
_READ = 1 << 16
_POLL_S = 0.02
_FORMATS = {(1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}
_EXTENSIBLE = 0xFFFE


def is_live_input(path, idle: float | None = None) -> bool:
    """Whether ``path`` is read as a live input: ``-`` (stdin), anything that is not a regular
    file (a named pipe, ``/dev/stdin``), a regular file when ``idle`` is given (``--audio-idle``:
    follow it while it grows), or a WAV file whose header leaves its length open (a writer is still
    at it)."""
    if str(path) == "-":
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False  # load_audio names the problem
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode) or idle is not None:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    size = _data_size(head)
    return size is not None and (size == 0 or size >= _OPEN_SIZE)


def _data_size(head: bytes) -> int | None:
    """The size field of the data chunk among the chunks in ``head`` (a WAV file's first bytes),
    or None where ``head`` ends before it."""
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            return size
        pos += 8 + size + (size & 1)
    return None


def open_live(path, sample_rate: int = 16000, idle: float | None = None) -> "LiveAudio":
    """A :class:`LiveAudio` on ``path`` (``-``: stdin); ``idle``: see the module."""
    if str(path) == "-":
        return LiveAudio(os.dup(sys.stdin.buffer.fileno()), "stdin", sample_rate, regular=False)
    try:
        fd = os.open(path, os.O_RDONLY)  # a named pipe: waits for its writer
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as err:
        raise InputError(f"Audio input {path} cannot be opened: {err.strerror or err}") from err
    return LiveAudio(fd, str(path), sample_rate, regular=regular, idle=idle)


class LiveAudio:
    """A WAV input read as it arrives (see the module). ``samples``: the mono float32 waveform at
    ``sample_rate`` so far; ``ended``: the input is complete (``samples`` is then the whole
    waveform). Duck-types :class:`~talkfast.io.audio.Audio` where the pipeline reads ``samples``
    and ``sample_rate``; owns ``fd`` (closed at the end of the input or by :meth:`close`)."""

    def __init__(self, fd: int, name: str, sample_rate: int = 16000, *, regular: bool = False,
                 idle: float | None = None):
        self.fd, self.path, self.sample_rate = fd, name, int(sample_rate)
        self.regular = regular
        self.idle = DEFAULT_IDLE_S if idle is None else float(idle)
        if not self.idle > 0:
            raise ValueError(f"--audio-idle must be a positive number of seconds, got {idle!r}")
        self.ended = False
        self.source_sample_rate = self.source_channels = 0
        self._raw = bytearray()  # bytes read, not parsed yet
        self._header_done = False
        self._data_left: int | None = None  # bytes of the data chunk still to come (None: open)
        self._dtype = None
        self._buf = np.empty(1 << 16, np.float32)
        self._n = 0
        self._n_in = 0
        self._peak = self._sum_sq = 0.0
        self._resampler = None

    def __str__(self) -> str:
        return self.path

    @property
    def samples(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def duration(self) -> float:
        return self._n / self.sample_rate

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def snapshot(self) -> Audio:
        """What has arrived, as an :class:`Audio` (a view: no copy)."""
        return Audio(self.samples, self.sample_rate, self.source_sample_rate or self.sample_rate,
                     self.source_channels or 1, path=self.path)

    def wait(self, n: int | float) -> Audio:
        """Read (blocking) until at least ``n`` samples are there or the input ended; the samples so
        far. An unusable input raises :class:`InputError` (the input is then closed)."""
        try:
            while not self.ended and self._n < n:
                self._read_some()
        except BaseException:
            self.close()
            raise
        return self.snapshot()

    def complete(self) -> Audio:
        """The whole input (reads to its end): the lookahead of a family whose features need it all."""
        return self.wait(math.inf)

    # -- reading ------------------------------------------------------------------------------------

    def _read_some(self) -> None:
        want = _READ if self._data_left is None else max(1, min(_READ, self._data_left - len(self._raw)))
        chunk = os.read(self.fd, want)
        if chunk:
            self._raw += chunk
            self._take()
            return
        if not self.regular:  # end of a pipe / stdin
            self._finish()
            return
        last = os.fstat(self.fd).st_size
        since = time.monotonic()
        while time.monotonic() - since < self.idle:  # a regular file: wait for it to grow
            time.sleep(_POLL_S)
            if os.fstat(self.fd).st_size != last:
                return
        self._reread_sizes()
        self._finish()

    def _take(self) -> None:
        """Parse what is buffered: the header once, then whole sample frames of the data chunk."""
        if not self._header_done and not self._parse_header():
            return
        frame = self._frame_bytes
        usable = len(self._raw) if self._data_left is None else min(len(self._raw), self._data_left)
        usable -= usable % frame
        if usable:
            self._decode(bytes(self._raw[:usable]))
            del self._raw[:usable]
            if self._data_left is not None:
                self._data_left -= usable
        if self._data_left is not None and self._data_left < frame:
            self._data_left = 0  # the declared length is complete; what follows (other chunks) is not audio
            self._raw.clear()
            self._finish()

    def _parse_header(self) -> bool:
        raw = self._raw
        if len(raw) >= 12 and (raw[:4] != b"RIFF" or raw[8:12] != b"WAVE"):
            raise InputError(f"Audio input {self.path} is not a WAV stream (it starts with {bytes(raw[:12])!r}); "
                             "live input (-a -, a pipe, a growing file) takes WAV: RIFF/WAVE, PCM 16/32-bit or float")
        pos, fmt = 12, None
        while len(raw) >= pos + 8:
            cid, size = bytes(raw[pos : pos + 4]), struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
            if cid == b"data":
                if fmt is None:
                    raise InputError(f"Audio input {self.path}: the WAV data chunk comes before its 'fmt ' chunk")
                self._set_format(*fmt)
                self._data_left = None if size == 0 or size >= _OPEN_SIZE else size
                self._header_done = True
                del raw[: pos + 8]
                return True
            if size >= _OPEN_SIZE:
                raise InputError(f"Audio input {self.path}: WAV chunk {cid!r} has an unusable size {size}")
            if len(raw) < pos + 8 + size:
                return False
            if cid == b"fmt ":
                fmt = self._read_fmt(bytes(raw[pos + 8 : pos + 8 + size]))
            pos += 8 + size + (size & 1)
        return False

    def _read_fmt(self, body: bytes) -> tuple[int, int, int, int]:
        if len(body) < 16:
            raise InputError(f"Audio input {self.path}: the WAV 'fmt ' chunk is too short ({len(body)} bytes)")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
        if tag == _EXTENSIBLE and len(body) >= 26:
            tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
        return tag, channels, rate, bits

    def _set_format(self, tag: int, channels: int, rate: int, bits: int) -> None:
        dtype = _FORMATS.get((tag, bits))
        if dtype is None or channels < 1 or rate < 1:
            raise InputError(f"Audio input {self.path}: WAV format {tag} with {bits}-bit samples, {channels} channel(s) "
                             f"at {rate} Hz is not supported live; send PCM 16/32-bit or float 32/64-bit "
                             "(e.g. ffmpeg ... -c:a pcm_s16le -f wav -)")
        self._dtype = np.dtype(dtype)
        self._scale = 2.0 ** (bits - 1) if tag == 1 else None
        self._frame_bytes = self._dtype.itemsize * channels
        self.source_sample_rate, self.source_channels = rate, channels
        if rate != self.sample_rate:
            self._resampler = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float64", quality="HQ")

    def _reread_sizes(self) -> None:
        """A regular file whose writer stopped: its header may declare the sizes by now."""
        if self._data_left is not None or not self._header_done:
            return
        size = _data_size(os.pread(self.fd, 4096, 0))
        if size is not None and 0 < size < _OPEN_SIZE:
            self._data_left = size - self._n_in * self._frame_bytes
            if self._data_left < 0:
                raise InputError(
                    f"Audio input {self.path}: its header now declares {size} bytes of audio data, but more "
                    "was read while its length was open (a chunk after the data?); give the complete file")

    def _decode(self, data: bytes) -> None:
        block = np.frombuffer(data, self._dtype).reshape(-1, self.source_channels)
        block = block.astype(np.float32) / np.float32(self._scale) if self._scale else block.astype(np.float32)
        if not np.all(np.isfinite(block)):
            raise InputError(f"Audio input {self.path} contains invalid samples (NaN or infinity).")
        self._n_in += len(block)
        mono = block.mean(axis=1, dtype=np.float64) if self.source_channels > 1 else block[:, 0].astype(np.float64)
        peak = float(np.max(np.abs(mono)))
        if peak > 1.0:
            raise InputError(f"Audio input {self.path} has samples beyond full scale (peak {peak:.3g}); a live input "
                             "cannot be normalised afterwards: send it at most at full scale")
        self._peak = max(self._peak, peak)
        self._sum_sq += float(np.dot(mono, mono))
        self._append(mono if self._resampler is None else self._resampler.resample_chunk(mono, last=False))

    def _append(self, out: np.ndarray) -> None:
        self._buf = with_room(self._buf, self._n, len(out))  # snapshots taken before keep the old array
        self._buf[self._n : self._n + len(out)] = out
        self._n += len(out)

    def _finish(self) -> None:
        """The end of the input: every check of :func:`~talkfast.io.audio.load_audio` that needs it."""
        self.close()
        seconds = self._n_in / self.source_sample_rate if self.source_sample_rate else 0.0
        if not self._header_done:
            raise InputError(f"Audio input {self.path} ended within its WAV header ({len(self._raw)} bytes): "
                             "it is not a complete WAV stream")
        if self._data_left is not None and self._data_left > 0:
            raise InputError(f"Audio input {self.path} was cut off: it ended after {seconds:.2f} s, "
                             f"{self._data_left} bytes short of the length its WAV header declares")
        if len(self._raw) % self._frame_bytes:
            raise InputError(f"Audio input {self.path} was cut off in the middle of a sample after {seconds:.2f} s")
        check_heard(f"Audio input {self.path}", self._n_in, self._peak, self._sum_sq)
        if self._resampler is not None:
            self._append(self._resampler.resample_chunk(np.zeros(0, np.float64), last=True))
        if self._n == 0:
            raise InputError(f"Audio input {self.path} is too short to resample to {self.sample_rate} Hz.")
        self.ended = True



def read_audio(path, sample_rate: int = 16000, idle: float | None = None) -> "Audio | LiveAudio":
    """The driving audio at ``path``: a :class:`LiveAudio` where :func:`is_live_input` says so,
    else the complete file (:func:`~talkfast.io.audio.load_audio`)."""
    if is_live_input(path, idle):
        return open_live(path, sample_rate, idle)
    return load_audio(path, sample_rate)
