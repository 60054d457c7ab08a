"""``generate --stream``: a video a player can open while it grows, and the normal mp4 at the end.

While the clips come, :class:`StreamingVideoWriter` feeds every frame to two ffmpeg encoders:

* the **growing file** ``<name>.partial.mp4`` beside the output (:func:`partial_path`): a fragmented
  MP4 (``-movflags empty_moov+default_base_moof`` with ``-frag_duration`` of one frame: the header
  first, then one self-contained fragment per frame, each written as soon as the next packet
  arrives), H.264 with
  ``-tune zerolatency`` (no lookahead, no B-frames: a frame leaves the encoder when it enters) and a
  keyframe at every clip start (``-g clip_frames``), with the whole audio track muxed by the same
  process from a WAV of the video's final length (known before the first frame), so audio and
  video share one timeline and are in sync at every fragment. A player (ffplay, mpv, VLC, a
  browser) opens it at any time and plays what is there; after clip k is written, its frames but
  the last one or two (held until the next packet: the muxer's interleaving) are in the file, and
  clip k's last frames follow with clip k+1's first.
* the **final file** at the output path: :class:`~talkfast.io.video.VideoWriter`, exactly as
  without ``--stream`` (the same encoder settings, audio muxed at the end, published by an atomic
  rename), so the finished video is byte for byte the video stream a run without ``--stream``
  writes: the same frames, decoded equal.

When the run ends the final video (and its sidecar) is published and the growing file is deleted.
On Ctrl-C, SIGTERM or an error the final path gets nothing (the VideoWriter's rule) and the growing
file is stopped where it is (its ffmpeg killed: :meth:`GrowingVideo.stop`) and kept as
``<name>.partial.mp4``: a playable prefix, its audio cut near its last frame. If the Python process
is killed outright, ffmpeg sees the end of its input and finishes the file normally (the audio then
runs on to the end of the recording over the last frame). A later ``--stream``
run of the same output replaces a partial file talkfast wrote (it carries :data:`PARTIAL_MARK` in
its header); any other file there needs ``--overwrite`` (:func:`talkfast.io.write_rule.check_writes`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from talkfast.errors import OutputError
from talkfast.io.audio import save_wav
from talkfast.io.video import VideoWriter, check_output_path, output_path
from talkfast.io.write_rule import check_writes

__all__ = ["PARTIAL_MARK", "GrowingVideo", "StreamingVideoWriter", "check_outputs", "check_stream_path",
           "encoder_command", "is_partial_by_talkfast", "open_writer", "partial_path", "write_segment"]

#: The comment every growing file carries in its header (written first: ``empty_moov``).
PARTIAL_MARK = "talkfast partial video"
_HEAD = 1 << 16  # the bytes of a file searched for the mark


def partial_path(path) -> Path:
    """The growing file of the output ``path``: ``talk.mp4`` -> ``talk.partial.mp4`` beside it."""
    p = output_path(path)
    return p.with_name(f"{p.stem}.partial{p.suffix}")


def is_partial_by_talkfast(path) -> bool:
    """A regular file (not a link) whose first 64 KiB hold :data:`PARTIAL_MARK` (a growing file's
    header)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            return PARTIAL_MARK.encode("ascii") in fh.read(_HEAD)
    except OSError:
        return False


def check_stream_path(path, *, overwrite: bool = False, inputs=()) -> Path:
    """The write rule for the growing file of the output ``path`` (checked before any work, as the
    output's own): never an input; a file there talkfast did not grow needs ``overwrite``."""
    (p,) = check_writes([partial_path(path)], inputs=[g for g in inputs if isinstance(g, (str, os.PathLike))],
                        overwrite=overwrite, ours=is_partial_by_talkfast,
                        mark=f"no '{PARTIAL_MARK}' comment in its header")
    return p


def check_outputs(output, *, overwrite: bool = False, inputs=(), growing: bool = False) -> Path | None:
    """A generation's output path checked before any work (:func:`~talkfast.io.video.check_output_path`),
    and with ``growing`` (``--stream``) its growing file too (:func:`check_stream_path`); None
    without an ``output``."""
    if output is None:
        if growing:
            raise ValueError("streaming to a growing file (--stream) needs an output path")
        return None
    out = check_output_path(output, overwrite=overwrite, inputs=inputs)
    if growing:
        check_stream_path(out, overwrite=overwrite, inputs=inputs)
    return out


def open_writer(path, fps: int, size: tuple[int, int], *, growing: bool = False, keyframe_every: int | None = None,
                inputs=(), **options):
    """The writer of a generation's video: a :class:`~talkfast.io.video.VideoWriter`, or with
    ``growing`` a :class:`StreamingVideoWriter` (a keyframe every ``keyframe_every`` frames: the
    clip length); ``options`` are the VideoWriter's (audio, max_frames, sidecar, ...)."""
    if growing:
        return StreamingVideoWriter(path, fps, size, keyframe_every=keyframe_every, inputs=inputs, **options)
    return VideoWriter(path, fps, size, **options)


def encoder_command(fps: int, size: tuple[int, int], audio_wav: Path | None = None, *, crf: int = 18,
                    preset: str = "veryfast", keyframe_every: int | None = None) -> list[str]:
    """The ffmpeg command, up to its output options, that encodes raw rgb24 frames read from stdin
    (``size`` (W, H) at ``fps``) to H.264 without lookahead (``-tune zerolatency``: a frame leaves
    the encoder when it enters), with ``audio_wav`` muxed as AAC (or no audio track); a keyframe
    every ``keyframe_every`` frames. Shared by the growing file and :func:`write_segment`."""
    w, h = size
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-framerate", str(int(fps)), "-i", "pipe:0"]
    if audio_wav is not None:
        cmd += ["-i", str(audio_wav), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
    else:
        cmd += ["-map", "0:v:0"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-preset", preset, "-tune", "zerolatency"]
    if keyframe_every:
        cmd += ["-g", str(int(keyframe_every)), "-sc_threshold", "0"]
    return cmd


def write_segment(path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = 16000, *,
                  start_seconds: float = 0.0) -> Path:
    """One piece of a live stream: uint8 frames (T, H, W, 3) and their audio span (mono samples at
    ``sample_rate``, or None) as a self-contained MPEG-TS file at ``path`` (H.264 + AAC, a keyframe
    first) whose timestamps start at ``start_seconds`` (``-output_ts_offset``; no mux delay), so
    that consecutive pieces continue one timeline (an HLS stream's segments). Encoded with the
    growing file's settings (:func:`encoder_command`); raises :class:`OutputError` if ffmpeg fails."""
    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(frames, dtype=np.uint8))
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T > 0, got {arr.shape}")
    wav = path.with_name(f"{path.stem}.wav") if audio is not None else None
    try:
        if wav is not None:
            save_wav(wav, np.asarray(audio, dtype=np.float32), sample_rate)
        cmd = encoder_command(fps, (arr.shape[2], arr.shape[1]), wav, keyframe_every=len(arr))
        cmd += ["-output_ts_offset", f"{start_seconds:.6f}", "-muxdelay", "0", "-muxpreload", "0",
                "-f", "mpegts", str(path)]
        proc = subprocess.run(cmd, input=arr.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    finally:
        if wav is not None:
            wav.unlink(missing_ok=True)
    if proc.returncode != 0 or not path.is_file():
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        path.unlink(missing_ok=True)
        raise OutputError(f"Writing the stream segment {path} failed: {lines[-1] if lines else proc.returncode}")
    return path


class GrowingVideo:
    """The fragmented MP4 at ``path``, written frame by frame by one ffmpeg process (see the
    module); ``audio_wav``: the whole audio track (already of the video's final length), or None."""

    def __init__(self, path, fps: int, size: tuple[int, int], audio_wav: Path | None = None, *,
                 keyframe_every: int | None = None, crf: int = 18, preset: str = "veryfast"):
        self.path = Path(path)
        self.fps, self.size = int(fps), (int(size[0]), int(size[1]))
        self.audio_wav = audio_wav
        self.keyframe_every = keyframe_every
        self.crf, self.preset = crf, preset
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        cmd = encoder_command(self.fps, self.size, self.audio_wav, crf=self.crf, preset=self.preset,
                              keyframe_every=self.keyframe_every)
        cmd += ["-metadata", f"comment={PARTIAL_MARK}", "-metadata:s:v:0", f"handler_name={PARTIAL_MARK}",
                # a fragment per frame (frag_every_frame instead leaves the fragments' times wrong when
                # there is an audio track: frames overlap and are dropped; ffmpeg 9.0)
                "-frag_duration", str(1_000_000 // self.fps), "-movflags", "empty_moov+default_base_moof",
                "-flush_packets", "1",
                "-f", "mp4", str(self.path)]
        return cmd

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames (T, H, W, 3) (checked by the caller: the final writer's rules)."""
        if self._proc is None:
            self._log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._log)
        try:
            for frame in frames:
                self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                self.frames_written += 1
            self._proc.stdin.flush()
        except OSError as err:  # ffmpeg stopped (a full disk, a removed folder)
            self.stop()
            raise OutputError(f"Writing the growing video {self.path} failed (ffmpeg stopped): "
                              f"{self._error() or err}") from err

    def close(self) -> None:
        """The end of the input: ffmpeg writes the rest and exits (raises if it failed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        code = proc.wait()
        if code != 0:
            raise OutputError(f"Writing the growing video {self.path} failed: {self._error() or f'exit code {code}'}")
        self._close_log()

    def stop(self) -> None:
        """Stop where it is (an interrupted run): ffmpeg is killed, so that it neither waits for
        more frames nor runs the audio on past the video (it would, finishing normally); every
        fragment it wrote is complete and self-contained (``flush_packets``), so the file is a
        playable prefix (a fragment cut by the kill is ignored by players)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            self._close_log()

    def _error(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            lines = self._log.read(1 << 16).decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


class StreamingVideoWriter:
    """A :class:`~talkfast.io.video.VideoWriter` for the final video plus the :class:`GrowingVideo`
    beside it (see the module); the VideoWriter's interface (``write``, ``close``, ``abort``,
    ``sidecar``). ``keyframe_every``: the clip length (a keyframe at every clip start)."""

    def __init__(self, path, fps: int, size: tuple[int, int], audio=None, max_frames: int | None = None,
                 sidecar: dict[str, Any] | None = None, *, keyframe_every: int | None = None,
                 reject_blank: bool = False, overwrite: bool = True, inputs=()):
        self.partial = check_stream_path(path, overwrite=overwrite, inputs=inputs)
        self.final = VideoWriter(path, fps, size, audio=audio, max_frames=max_frames, sidecar=sidecar,
                                 reject_blank=reject_blank, overwrite=overwrite)
        self.path = self.final.path
        try:
            # a live input's final length is unknown (max_frames None): then the growing file has no
            # audio track; the final video has it, muxed from the received samples at the end
            wav = self.final.matched_audio(max_frames) if audio is not None and max_frames is not None else None
            try:
                self.partial.unlink(missing_ok=True)  # an earlier run's (ours, or --overwrite)
            except OSError as err:
                raise OutputError(f"Cannot replace {self.partial}: {err.strerror or err}.") from err
        except BaseException:
            self.final.abort()
            raise
        self.growing = GrowingVideo(self.partial, fps, size, wav, keyframe_every=keyframe_every)

    @property
    def sidecar(self) -> dict | None:
        return self.final.sidecar

    @sidecar.setter
    def sidecar(self, value: dict | None) -> None:
        self.final.sidecar = value

    @property
    def frames_written(self) -> int:
        return self.final.frames_written

    def write(self, frames: np.ndarray) -> int:
        kept = self.final.write(frames)  # checks the frames; drops those past max_frames
        if kept:
            arr = np.asarray(frames)
            arr = arr[None] if arr.ndim == 3 else arr
            try:
                self.growing.write(arr[:kept])
            except BaseException:
                self.final.abort()
                raise
        return kept

    def close(self) -> Path:
        """The growing file finished, the final video published, then the growing file deleted."""
        try:
            self.growing.close()
        except BaseException:
            self.abort()
            raise
        path = self.final.close()  # on failure the final writer cleans up; the partial file stays
        self.partial.unlink(missing_ok=True)
        return path

    def abort(self) -> None:
        """Nothing at the final path; the growing file stopped and kept (a playable prefix)."""
        try:
            self.growing.stop()
        finally:
            self.final.abort()

