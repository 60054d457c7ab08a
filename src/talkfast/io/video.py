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

from talkfast.errors import InputError, OutputError
from talkfast.io.audio import Audio, save_wav

__all__ = ["VideoInfo", "VideoWriter", "check_output_path", "probe_video", "remove_stale_temporaries", "write_json_atomic"]

StrPath = str | os.PathLike[str]

_MIN_SIDE = 16


def check_output_path(path: StrPath) -> Path:
    """Validate an output video path and return it resolved.

    The path must end in ``.mp4`` and must not be a directory; its parent folder is created if
    missing and must be writable (checked by actually creating a temporary file there, since
    ``os.access`` is meaningless for root). Raises :class:`OutputError` otherwise.
    """
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise OutputError(f"Output path {p} is a directory; give a file name ending in .mp4.")
    if p.suffix.lower() != ".mp4":
        raise OutputError(f"Output path {p} must end in .mp4 (got {p.suffix or 'no extension'!r}).")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"Cannot write {p}: {parent} is a file, not a folder.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the output folder for {p}: {err.strerror or err}.") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {p}: folder {parent} is not writable.")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".talkfast-write-test-"):
            pass
    except OSError as err:
        raise OutputError(f"Cannot write {p}: folder {parent} is not writable ({err.strerror or err}).") from err
    return p


def write_json_atomic(path: StrPath, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``.

    Readers never see a partial file. Raises :class:`OutputError` if the file cannot be written;
    a ``TypeError`` from a non-serialisable ``obj`` propagates (a programming error).
    """
    p = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"Cannot write {p}: {err.strerror or err}.") from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions of an ordinary new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Cannot write {p}: {err.strerror or err}.") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def remove_stale_temporaries(path: StrPath) -> list[Path]:
    """Delete the hidden temporary files a :class:`VideoWriter` for ``path`` left behind.

    A writer removes its temporaries itself on success, on error and on ``KeyboardInterrupt``; they
    survive only when the process is killed outright (SIGKILL, the OOM killer, a power cut). Only
    the names a writer for ``path`` creates are matched (``.<name>.<12 hex digits>.partial.mp4``,
    ``.video.mp4``, ``.audio.wav``, ``.partial.json`` and the sidecar's own temporary), never the
    published video or sidecar. Call it only while no other writer for ``path`` is running (e.g. a
    batch job about to regenerate an output). Returns the files deleted.
    """
    p = Path(path).expanduser().resolve()
    name = re.escape(p.name)
    pattern = re.compile(
        rf"\.{name}\.[0-9a-f]{{12}}\.(?:partial\.mp4|video\.mp4|audio\.wav|partial\.json)"
        rf"|\.\.{name}\.[0-9a-f]{{12}}\.partial\.json\..+\.tmp"
    )
    removed = []
    try:
        entries = list(p.parent.iterdir())
    except OSError:  # no folder yet (nothing to clean) or unreadable (the writer will say so)
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file():
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


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
    (a file already there from before is left untouched).
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

        self.path = check_output_path(path)
        self.fps = fps
        self.size = (width, height)
        self.audio = audio
        self.max_frames = max_frames
        self.sidecar = dict(sidecar) if sidecar is not None else None
        self.sidecar_path = self.path.with_suffix(".json")
        self.frames_written = 0
        self._crf = crf
        self._preset = preset

        stem = f".{self.path.name}.{secrets.token_hex(6)}"
        folder = self.path.parent
        self._partial = folder / f"{stem}.partial.mp4"
        self._video_tmp = folder / f"{stem}.video.mp4"
        self._wav_tmp = folder / f"{stem}.audio.wav"
        self._json_tmp = folder / f"{stem}.partial.json"
        self._gen: Any = None
        self._state = "open"  # "open" -> "closed" | "aborted"

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
        self._state = "closed"
        return self.path

    def _mux(self) -> None:
        """Copy the video stream into the partial file, adding the length-matched audio track."""
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "error", "-i", str(self._video_tmp)]
        if self.audio is not None:
            self._write_matched_wav()
            cmd += ["-i", str(self._wav_tmp), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        else:
            cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(self._partial)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0 or not self._partial.is_file():
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            raise OutputError(f"Writing {self.path} failed while muxing: {detail}")

    def _write_matched_wav(self) -> None:
        """Write the audio padded with silence / trimmed to exactly the video's duration."""
        assert self.audio is not None
        rate = self.audio.sample_rate
        target = -(-self.frames_written * rate // self.fps)  # ceil(frames / fps * rate)
        save_wav(self._wav_tmp, self.audio.samples, rate, length=target)  # streamed: no full copy

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

