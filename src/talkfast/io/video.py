"""MP4 output: path checks, a streaming clip-by-clip writer, atomic JSON sidecars and a prober.

:class:`VideoWriter` never leaves a half-written file at the requested path: frames are encoded
into hidden temporary files next to it and only an ``os.replace`` publishes the finished video.

Muxing is done in two steps. While frames stream in, ffmpeg (via ``imageio_ffmpeg.write_frames``)
encodes a video-only H.264 file; on :meth:`VideoWriter.close` the audio is cut or padded to exactly
the length of the frames written (``ceil(frames * sample_rate / fps)`` samples) and muxed in with
``-c:v copy``. ``-shortest`` is deliberately not used: when the two lengths are not whole multiples
of each other it trims the AAC stream back to a 1024-sample frame boundary (or drops a 1-frame
video's audio entirely), and if the audio is a hair short it drops the last video frame.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import imageio_ffmpeg
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no lock, a running writer's temporaries are not told apart
    fcntl = None  # type: ignore[assignment]

from talkfast.errors import InputError, OutputError, TalkfastError
from talkfast.io.audio import Audio, save_wav
from talkfast.io.write_rule import check_writes, replacing

__all__ = ["BlankVideoError", "VideoInfo", "VideoWriter", "check_output_path", "is_talkfast_output", "output_path",
           "probe_video", "remove_stale_temporaries", "write_json_atomic"]

StrPath = str | os.PathLike[str]

_MIN_SIDE = 16
#: A frame whose pixel values (all channels) span at most this many levels is "flat" (one colour).
BLANK_LEVELS = 2


class BlankVideoError(TalkfastError):
    """Every frame of a generated video is one flat colour (e.g. all black): the model produced
    nothing (non-finite values, a broken checkpoint). Nothing is published."""

    exit_code = 5


def check_output_path(path: StrPath, *, overwrite: bool = True, inputs=()) -> Path:
    """Validate an output video path and return it absolute (its folder resolved, the file name
    itself not followed: a symbolic link at ``path`` is replaced, never its target).

    The path must end in ``.mp4`` and must not be a directory; then the video and its ``.json``
    sidecar go through talkfast's write rule (:func:`talkfast.io.write_rule.check_writes`):
    neither may be one of ``inputs`` (files, or folders such as the checkpoint: any file already
    in them, unless it is talkfast's own video output), even with ``overwrite``; ``overwrite``
    False: an existing file at ``path`` or at its sidecar is replaced only if talkfast wrote it
    (see :func:`is_talkfast_output`). The parent folder is created if missing and must be
    writable. Raises :class:`OutputError` otherwise.
    """
    p = output_path(path)
    if p.is_dir():
        raise OutputError(f"Output path {p} is a directory; give a file name ending in .mp4.")
    if p.suffix.lower() != ".mp4":
        raise OutputError(f"Output path {p} must end in .mp4 (got {p.suffix or 'no extension'!r}).")
    sidecar = p.with_suffix(".json")
    check_writes((p, sidecar), inputs=[g for g in inputs if isinstance(g, (str, os.PathLike))],
                 overwrite=overwrite, ours=lambda _path: is_talkfast_output(p),
                 mark=f"no talkfast sidecar {sidecar.name} beside {p.name}")
    return p


def output_path(path: StrPath) -> Path:
    """``path`` made absolute with its folder resolved but its own name not followed (a symbolic
    link there is the output, not its target)."""
    raw = Path(path).expanduser()
    return raw.parent.resolve() / raw.name


def is_talkfast_output(path: StrPath) -> bool:
    """True if the video ``path`` and its ``.json`` sidecar are what ``generate`` publishes: the
    sidecar is a regular file holding a JSON object with a ``"talkfast"`` version, and the video is
    missing or a regular file (neither is a symbolic link). Only such files are replaced without
    ``overwrite``."""
    p = Path(path)
    sidecar = p.with_suffix(".json")
    if p.is_symlink() or (os.path.lexists(p) and not p.is_file()):
        return False
    if sidecar.is_symlink() or not sidecar.is_file():
        return False
    try:
        if sidecar.stat().st_size > 1 << 24:
            return False
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("talkfast"), str)


def write_json_atomic(path: StrPath, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``
    (:func:`talkfast.io.write_rule.replacing`; the temporary is named ``.<name>.XXXXXXXX.tmp``,
    which :func:`remove_stale_temporaries` recognises for a sidecar).

    Readers never see a partial file. Raises :class:`OutputError` if the file cannot be written;
    a ``TypeError`` from a non-serialisable ``obj`` propagates (a programming error).
    """
    p = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"Cannot write {p}: {err.strerror or err}.") from err
    with replacing(p, Path(tmp_name)):
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    return p


def remove_stale_temporaries(path: StrPath) -> list[Path]:
    """Delete the hidden temporary files a :class:`VideoWriter` for ``path`` left behind.

    A writer removes its temporaries itself on success, on error and on ``KeyboardInterrupt``; they
    survive only when the process is killed outright (SIGKILL, the OOM killer, a power cut). Only
    the names a writer for ``path`` creates are matched (``.<name>.<12 hex digits>.partial.mp4``,
    ``.video.mp4``, ``.audio.wav``, ``.partial.json`` and the sidecar's own temporary), never the
    published video or sidecar. A writer that is still running holds a lock on its ``.video.mp4``
    (``flock``, released by the kernel when its process dies however it dies): its files are left
    alone. Returns the files deleted.
    """
    p = output_path(path)
    name = re.escape(p.name)
    pattern = re.compile(
        rf"\.{name}\.(?P<a>[0-9a-f]{{12}})\.(?:partial\.mp4|video\.mp4|audio\.wav|partial\.json)"
        rf"|\.\.{name}\.(?P<b>[0-9a-f]{{12}})\.partial\.json\..+\.tmp"
    )
    removed: list[Path] = []
    try:
        entries = list(p.parent.iterdir())
    except OSError:  # no folder yet (nothing to clean) or unreadable (the writer will say so)
        return removed
    busy: dict[str, bool] = {}
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file():
            continue
        token = match.group("a") or match.group("b")
        if token not in busy:
            busy[token] = _locked(p.parent / f".{p.name}.{token}.video.mp4")
        if not busy[token]:
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def _lock(path: Path) -> int | None:
    """Create ``path`` and hold an exclusive ``flock`` on it (None where there is no ``fcntl``)."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _locked(path: Path) -> bool:
    """Whether a running writer holds the lock of ``path``."""
    if fcntl is None or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


class VideoWriter:
    """Stream uint8 RGB frames clip by clip into an H.264/AAC MP4, atomically.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=25, size=(512, 512), audio=audio,
                         max_frames=audio.num_frames(25)) as w:
            for clip in clips:          # each (T, H, W, 3) uint8
                w.write(clip)

    Only one clip is held in memory at a time. Frames beyond ``max_frames`` are dropped, so the
    last clip can be written whole. On leaving the block normally the file is finalised (and the
    ``sidecar`` dict, if any, is written to ``<path>.json``); if the block raises, or
    :meth:`abort` is called, all temporary files are removed and nothing new appears at ``path``
    (a file already there from before is left untouched). ``reject_blank``: if every frame
    written is one flat colour (within :data:`BLANK_LEVELS`), :meth:`close` publishes nothing and
    raises :class:`BlankVideoError`. ``overwrite`` False: refuse to replace an existing file that
    talkfast did not write (see :func:`check_output_path`).
    """

    def __init__(
        self,
        path: StrPath,
        fps: int,
        size: tuple[int, int],
        audio: Audio | None = None,
        max_frames: int | None = None,
        sidecar: dict[str, Any] | None = None,
        *,
        crf: int = 18,
        preset: str = "medium",
        reject_blank: bool = False,
        overwrite: bool = True,
    ) -> None:
        if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive int, got {fps!r}")
        if len(size) != 2:
            raise ValueError(f"size must be (width, height), got {size!r}")
        width, height = int(size[0]), int(size[1])
        if width < _MIN_SIDE or height < _MIN_SIDE:
            raise ValueError(f"video size must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {width}x{height}")
        if width % 2 or height % 2:
            raise ValueError(f"video width and height must be even for H.264/yuv420p, got {width}x{height}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf}")

        self.path = check_output_path(path, overwrite=overwrite)
        self.fps = fps
        self.size = (width, height)
        self.audio = audio
        self.max_frames = max_frames
        self.sidecar = dict(sidecar) if sidecar is not None else None
        self.sidecar_path = self.path.with_suffix(".json")
        self.frames_written = 0
        self._crf = crf
        self._preset = preset
        self._reject_blank = reject_blank
        self._varied = False  # some frame written so far is not one flat colour

        stem = f".{self.path.name}.{secrets.token_hex(6)}"
        folder = self.path.parent
        self._partial = folder / f"{stem}.partial.mp4"
        self._video_tmp = folder / f"{stem}.video.mp4"
        self._wav_tmp = folder / f"{stem}.audio.wav"
        self._json_tmp = folder / f"{stem}.partial.json"
        self._gen: Any = None
        self._state = "open"  # "open" -> "closed" | "aborted"
        try:  # held until close/abort: remove_stale_temporaries leaves a running writer's files alone
            self._lock_fd = _lock(self._video_tmp)
        except OSError as err:
            self._state = "aborted"
            raise OutputError(f"Cannot write {self.path}: {err.strerror or err}.") from err

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # A writer dropped without close()/abort() must not leave ffmpeg or temp files behind.
        try:
            if getattr(self, "_state", None) == "open":
                self.abort()
        except Exception:
            pass

    # -- writing -----------------------------------------------------------------------------------

    @property
    def remaining(self) -> int | None:
        """Frames still accepted before ``max_frames`` is reached (None if unlimited)."""
        return None if self.max_frames is None else self.max_frames - self.frames_written

    def write(self, frames: np.ndarray) -> int:
        """Append a clip of frames (T, H, W, 3) uint8 (a single (H, W, 3) frame is also accepted).

        Returns how many frames were kept (fewer than T once ``max_frames`` is reached).
        """
        if self._state != "open":
            raise RuntimeError(f"VideoWriter for {self.path} is already {self._state}")
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"frames must have shape (T, H, W, 3), got {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {arr.dtype}")
        width, height = self.size
        if arr.shape[1:3] != (height, width):
            raise ValueError(
                f"frame size {arr.shape[2]}x{arr.shape[1]} does not match the video size {width}x{height}"
            )
        if self.max_frames is not None:
            arr = arr[: max(0, self.max_frames - self.frames_written)]
        if len(arr) == 0:
            return 0
        if self._reject_blank and not self._varied:
            flat = arr.reshape(len(arr), -1)
            self._varied = bool(np.any(flat.max(axis=1).astype(np.int16) - flat.min(axis=1) > BLANK_LEVELS))
        if self._gen is None:
            self._start()
        try:
            for frame in arr:
                self._gen.send(np.ascontiguousarray(frame))
                self.frames_written += 1
        except OSError as err:
            self.abort()
            raise OutputError(f"Encoding {self.path} failed (ffmpeg stopped): {err}".splitlines()[0]) from err
        return len(arr)

    def _start(self) -> None:
        """Launch the ffmpeg encoder for the video-only temporary file."""
        self._gen = imageio_ffmpeg.write_frames(
            str(self._video_tmp),
            self.size,
            fps=self.fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(self._crf), "-preset", self._preset],
        )
        self._gen.send(None)  # prime the generator: this starts ffmpeg

    # -- finishing ---------------------------------------------------------------------------------

    def close(self) -> Path:
        """Finalise: mux audio, publish the MP4 (and sidecar) at their paths; returns the path."""
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise RuntimeError(f"VideoWriter for {self.path} was aborted")
        published = False
        try:
            if self.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            if self._reject_blank and not self._varied:
                raise BlankVideoError(
                    f"the generated video is blank (all {self.frames_written} frames are one flat colour), so "
                    f"{self.path} was not written; the model produced no image (non-finite values or broken weights?)")
            gen, self._gen = self._gen, None
            gen.close()  # waits for ffmpeg to flush and exit
            if not self._video_tmp.is_file() or self._video_tmp.stat().st_size == 0:
                raise OutputError(f"Encoding {self.path} failed: ffmpeg produced no video (is the disk full?).")
            self._mux()
            if self.sidecar is not None:
                write_json_atomic(self._json_tmp, self.sidecar)
            os.replace(self._partial, self.path)
            published = True
            if self.sidecar is not None:
                os.replace(self._json_tmp, self.sidecar_path)
        except BaseException:
            if published:
                self.path.unlink(missing_ok=True)
            self.abort()
            raise
        finally:
            self._video_tmp.unlink(missing_ok=True)
            self._wav_tmp.unlink(missing_ok=True)
            self._unlock()
        self._state = "closed"
        return self.path

    def _mux(self) -> None:
        """Copy the video stream into the partial file, adding the length-matched audio track."""
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "error", "-i", str(self._video_tmp)]
        if self.audio is not None:
            self.matched_audio()
            cmd += ["-i", str(self._wav_tmp), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        else:
            cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(self._partial)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0 or not self._partial.is_file():
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            raise OutputError(f"Writing {self.path} failed while muxing: {detail}")

    def matched_audio(self, frames: int | None = None) -> Path:
        """Write the audio padded with silence / trimmed to exactly the duration of ``frames``
        frames (default: the frames written) into this writer's temporary WAV (removed with the
        other temporaries); returns its path (:mod:`talkfast.io.stream` reads it while growing)."""
        assert self.audio is not None
        rate = self.audio.sample_rate
        count = self.frames_written if frames is None else frames
        target = -(-count * rate // self.fps)  # ceil(frames / fps * rate)
        return save_wav(self._wav_tmp, self.audio.samples, rate, length=target)  # streamed: no full copy

    def abort(self) -> None:
        """Stop encoding and delete every temporary file; nothing is published. Idempotent."""
        if self._state == "closed":
            return
        self._state = "aborted"
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()
            except Exception:
                pass
        for tmp in (self._partial, self._video_tmp, self._wav_tmp, self._json_tmp):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` measured. Durations are in seconds; ``audio_duration`` is 0 without audio."""

    num_frames: int
    fps: float
    width: int
    height: int
    video_duration: float
    audio_duration: float
    has_audio: bool


_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_AUDIO_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: (.*)")


def probe_video(path: StrPath) -> VideoInfo:
    """Measure a video file by decoding it with ffmpeg.

    The frame count and the audio length are counted from decoded data (not read from the
    container header); ``video_duration`` is ``num_frames / fps``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Video file not found: {p}")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    header = subprocess.run(
        [exe, "-nostdin", "-hide_banner", "-i", str(p)], capture_output=True, check=False
    ).stderr.decode(errors="replace")
    video_match = _VIDEO_RE.search(header)
    if video_match is None:
        raise InputError(f"{p} is not a readable video file (no video stream found).")
    desc = video_match.group(1)
    size_match = re.search(r"(?:^|, )(\d+)x(\d+)\b", desc)
    fps_match = re.search(r"([\d.]+)(k?) fps", desc)
    if size_match is None or fps_match is None:
        raise InputError(f"{p}: cannot parse the video stream description {desc!r}.")
    width, height = int(size_match.group(1)), int(size_match.group(2))
    fps = float(fps_match.group(1)) * (1000.0 if fps_match.group(2) else 1.0)

    try:
        num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(p))
    except RuntimeError as err:
        raise InputError(f"{p}: cannot decode the video stream.") from err

    audio_match = _AUDIO_RE.search(header)
    audio_duration = 0.0
    if audio_match is not None:
        rate_match = re.search(r"(\d+) Hz", audio_match.group(1))
        rate = int(rate_match.group(1)) if rate_match else 48000
        audio_duration = _count_audio_samples(exe, p, rate) / rate
    return VideoInfo(
        num_frames=int(num_frames),
        fps=fps,
        width=width,
        height=height,
        video_duration=num_frames / fps if fps > 0 else 0.0,
        audio_duration=audio_duration,
        has_audio=audio_match is not None,
    )


def _count_audio_samples(exe: str, p: Path, rate: int) -> int:
    """Decode the first audio stream to mono f32le at ``rate`` Hz and count the samples."""
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(p), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"]
    total = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
    if proc.returncode != 0:
        raise InputError(f"{p}: cannot decode the audio stream.")
    return total // 4

