"""Tests for talkfast.io: audio loading, image loading/cropping, MP4 writing and probing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkfast.errors import InputError, OutputError
from talkfast.io.audio import Audio, load_audio, save_wav
from talkfast.io.image import load_image, square_crop, square_crop_box, to_tensor, to_uint8
from talkfast.io.video import VideoWriter, check_output_path, probe_video, write_json_atomic


def _tone(seconds: float, rate: int, freq: float = 220.0, amp: float = 0.3, channels: int = 1) -> np.ndarray:
    """A sine tone of ``seconds`` at ``rate``, shape (n,) or (n, channels)."""
    t = np.arange(int(round(seconds * rate))) / rate
    mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


# ---------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_load_audio_resamples_to_16k(tmp_path: Path, rate: int) -> None:
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, _tone(1.5, rate), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.sample_rate == 16000
    assert audio.source_sample_rate == rate
    assert audio.source_channels == 1
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration == pytest.approx(1.5, abs=1e-3)
    assert audio.path == str(path)
    # Amplitude survives resampling (0.3 sine).
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.3, abs=0.02)


def test_load_audio_stereo_downmix_by_average(tmp_path: Path) -> None:
    rate = 44100
    left = _tone(1.0, rate, amp=0.4)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    audio = load_audio(path, sample_rate=rate)
    assert audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, left / 2, atol=1e-6)


def test_load_audio_int16_scaling(tmp_path: Path) -> None:
    rate = 16000
    pcm = np.zeros(rate, dtype=np.int16)
    pcm[::2] = 32767
    pcm[1::2] = -32768
    path = tmp_path / "int16.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.samples.max() == pytest.approx(32767 / 32768)
    assert audio.samples.min() == pytest.approx(-1.0)
    assert np.all(np.abs(audio.samples) <= 1.0)


def test_num_frames_exact() -> None:
    audio = Audio(np.zeros(32000, np.float32), 16000, 16000, 1, None)
    assert audio.duration == 2.0
    assert audio.num_frames(25) == 50
    assert audio.num_frames(30) == 60
    one_more = Audio(np.zeros(32001, np.float32), 16000, 16000, 1, None)
    assert one_more.num_frames(25) == 51
    # 1/3 s at 16 kHz is not a whole number of samples; ceil must still be exact.
    assert Audio(np.zeros(16000 // 3, np.float32), 16000, 16000, 1, None).num_frames(3) == 1


def test_load_audio_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(InputError, match="nope.wav"):
        load_audio(path)
    with pytest.raises(InputError, match="directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".m4a"])
def test_load_audio_random_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(InputError, match=f"garbage{suffix}.*not a readable audio file"):
        load_audio(path)


def test_load_audio_truncated_header(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, _tone(1.0, 16000), 16000, subtype="PCM_16")
    path = tmp_path / "truncated.wav"
    path.write_bytes(good.read_bytes()[:20])
    with pytest.raises(InputError, match="truncated.wav"):
        load_audio(path)


def test_load_audio_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(InputError, match="empty.wav.*empty"):
        load_audio(path)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(InputError, match="zero.wav"):
        load_audio(zero_bytes)


def test_load_audio_silent(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(InputError, match="silent.wav.*silent"):
        load_audio(path)
    audio = load_audio(path, allow_silent=True)
    assert len(audio.samples) == 16000
    # Very low level noise (about -90 dBFS) also counts as silent.
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.full(16000, 3e-5, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="quiet.wav"):
        load_audio(quiet)


def test_load_audio_nan_and_max_seconds(tmp_path: Path) -> None:
    data = _tone(1.0, 16000)
    data[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="nan.wav.*NaN"):
        load_audio(path)
    long_path = tmp_path / "long.wav"
    sf.write(long_path, _tone(3.0, 16000), 16000, subtype="PCM_16")
    with pytest.raises(InputError, match="long.wav.*limit"):
        load_audio(long_path, max_seconds=2.0)
    assert load_audio(long_path, max_seconds=5.0).duration == pytest.approx(3.0)


def test_load_audio_ffmpeg_fallback(tmp_path: Path) -> None:
    """A container libsndfile cannot read (AAC in MP4) is decoded through ffmpeg."""
    mp4 = tmp_path / "speech.mp4"
    audio = Audio(_tone(1.0, 16000), 16000, 16000, 1, None)
    with VideoWriter(mp4, fps=25, size=(32, 32), audio=audio) as writer:
        writer.write(np.zeros((25, 32, 32, 3), np.uint8))
    loaded = load_audio(mp4)
    assert loaded.source_sample_rate == 16000
    assert loaded.duration == pytest.approx(1.0, abs=0.01)


def test_save_wav_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    save_wav(path, np.array([0.0, 0.5, -0.5, 2.0, -2.0], np.float32), 16000)
    data, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    assert sf.info(str(path)).subtype == "PCM_16"
    assert data[3] == 32767 and data[4] == -32768  # clipped, not wrapped
    audio = Audio(_tone(0.5, 8000), 8000, 8000, 1, None)
    save_wav(path, audio)
    assert sf.info(str(path)).samplerate == 8000


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def test_load_image_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((40, 50, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :25, 3] = 255  # left half opaque, right half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (50, 40)
    out = np.asarray(img)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 49]) == (255, 255, 255)


def test_load_image_la_and_palette_transparency(tmp_path: Path) -> None:
    la = np.zeros((40, 40, 2), np.uint8)
    la[:20, :, 1] = 255  # top opaque black, bottom transparent
    la_path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(la_path)
    out = np.asarray(load_image(la_path))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[39, 0]) == (255, 255, 255)

    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    pal.paste(1, (0, 0, 20, 40))  # left half blue, right half index 0 = transparent
    p_path = tmp_path / "pal.png"
    pal.save(p_path, transparency=0)
    out = np.asarray(load_image(p_path))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 39]) == (255, 255, 255)


def test_load_image_grayscale_and_16bit(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 40), 77, np.uint8), "L").save(gray)
    img = load_image(gray)
    assert img.mode == "RGB" and tuple(np.asarray(img)[5, 5]) == (77, 77, 77)

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (40, 1))
    deep = tmp_path / "deep16.png"
    Image.fromarray(ramp).save(deep)  # mode I;16
    out = np.asarray(load_image(deep))
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    # Scaled, not clipped: mid-grey stays mid-grey.
    assert abs(int(out[0, 32, 0]) - round(ramp[0, 32] / 257)) <= 1
    assert len(np.unique(out[0, :, 0])) > 50


def test_load_image_cmyk_jpeg_and_float(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # red in CMYK
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    r, g, b = np.asarray(load_image(path))[20, 20].astype(int)
    assert r > 200 and g < 60 and b < 60

    f_path = tmp_path / "float.tiff"
    Image.fromarray(np.full((40, 40), 0.5, np.float32), "F").save(f_path)
    assert tuple(np.asarray(load_image(f_path))[0, 0]) == (128, 128, 128)


def test_load_image_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 40), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_image(path).size == (40, 60)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.png"):
        load_image(tmp_path / "missing.png")

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(InputError, match="garbage.png"):
        load_image(garbage)

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(InputError, match="truncated.png.*(corrupt|truncated)"):
        load_image(truncated)

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (31, 100)).save(tiny)
    with pytest.raises(InputError, match="tiny.png.*too small"):
        load_image(tiny)

    huge = tmp_path / "huge.png"
    Image.new("RGB", (200, 100)).save(huge)
    with pytest.raises(InputError, match="huge.png.*too large"):
        load_image(huge, max_pixels=10_000)
    assert load_image(huge, max_pixels=20_000).size == (200, 100)

    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


def test_square_crop_box_geometry() -> None:
    assert square_crop_box(200, 100) == (50, 0, 100)
    assert square_crop_box(100, 200) == (0, 50, 100)
    assert square_crop_box(200, 100, center=(10, 50)) == (0, 0, 100)  # clamped left
    assert square_crop_box(200, 100, center=(190, 50)) == (100, 0, 100)  # clamped right
    assert square_crop_box(200, 100, center=(120, 0)) == (70, 0, 100)
    assert square_crop_box(64, 64) == (0, 0, 64)


def test_square_crop_content() -> None:
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 150:] = 255  # white band on the right
    img = Image.fromarray(arr)
    centred = square_crop(img, 50)
    assert centred.size == (50, 50)
    assert np.asarray(centred)[:, :, 0].mean() < 128  # mostly black (columns 50..150)
    right = square_crop(img, 100, box=(160, 10, 200, 90))
    assert right.size == (100, 100)
    assert np.asarray(right)[:, 60:].min() == 255  # columns 160..200 are white
    with pytest.raises(ValueError):
        square_crop(img, 64, center=(1, 1), box=(0, 0, 2, 2))


def test_tensor_roundtrip() -> None:
    arr = np.random.default_rng(3).integers(0, 256, (34, 36, 3), dtype=np.uint8)
    t = to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 34, 36) and t.dtype == torch.float32
    assert t.min() >= -1.0 and t.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(t, value_range=(-1.0, 1.0)), arr)
    np.testing.assert_array_equal(to_uint8((t + 1) / 2), arr)
    batch = torch.stack([(t + 1) / 2] * 4)
    out = to_uint8(batch)
    assert out.shape == (4, 34, 36, 3) and out.dtype == np.uint8
    assert to_uint8(torch.full((3, 2, 2), 2.0)).max() == 255  # clipped


# ---------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------


def _clip(n: int, start: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    w, h = size
    values = (np.arange(start, start + n) * 9 % 256).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (n, h, w, 3)).copy()


@pytest.mark.parametrize("fps", [25, 24])
def test_video_writer_two_clips_with_audio(tmp_path: Path, fps: int) -> None:
    rate = 16000
    audio = Audio(_tone(1.37, rate), rate, rate, 1, None)
    n_frames = audio.num_frames(fps)
    out = tmp_path / "out" / "video.mp4"  # parent is created
    sidecar = {"fps": fps, "seed": 7, "name": "ünïcode"}
    with VideoWriter(out, fps=fps, size=(64, 48), audio=audio, max_frames=n_frames, sidecar=sidecar) as w:
        assert w.write(_clip(20, 0)) == 20
        kept = w.write(_clip(32, 20))  # more than needed: trimmed to the audio length
        assert kept == n_frames - 20
        assert w.write(_clip(4, 52)) == 0
    info = probe_video(out)
    assert info.num_frames == n_frames
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(fps)
    assert info.has_audio
    assert abs(info.audio_duration - info.video_duration) <= 1.0 / fps
    assert abs(info.audio_duration - info.video_duration) < 1e-3  # in fact sample-exact
    assert abs(info.video_duration - n_frames / fps) < 1e-6
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == sidecar
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.json", "video.mp4"]


def test_video_writer_short_audio_is_padded(tmp_path: Path) -> None:
    """Audio shorter than the frames written is padded with silence; no frame is lost."""
    audio = Audio(_tone(0.5, 16000), 16000, 16000, 1, None)
    out = tmp_path / "padded.mp4"
    with VideoWriter(out, fps=30, size=(32, 32), audio=audio) as w:
        w.write(_clip(31, 0, (32, 32)))
    info = probe_video(out)
    assert info.num_frames == 31
    assert abs(info.audio_duration - 31 / 30) <= 1 / 30


def test_video_writer_no_audio(tmp_path: Path) -> None:
    out = tmp_path / "silent.mp4"
    with VideoWriter(out, fps=25, size=(32, 16)) as w:
        w.write(_clip(3, 0, (32, 16))[0])  # a single (H, W, 3) frame is accepted
        w.write(_clip(5, 1, (32, 16)))
    info = probe_video(out)
    assert info.num_frames == 6 and not info.has_audio and info.audio_duration == 0.0
    assert not out.with_suffix(".json").exists()


def test_video_writer_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "fail.mp4"
    audio = Audio(_tone(1.0, 16000), 16000, 16000, 1, None)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, fps=25, size=(64, 48), audio=audio, sidecar={"a": 1}) as w:
            w.write(_clip(10, 0))
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_video_writer_abort_and_validation(tmp_path: Path) -> None:
    out = tmp_path / "abort.mp4"
    w = VideoWriter(out, fps=25, size=(64, 48))
    with pytest.raises(ValueError, match="does not match"):
        w.write(_clip(2, 0, (48, 64)))
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((2, 48, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        w.write(np.zeros((2, 48, 64, 4), np.uint8))
    w.write(_clip(2, 0))
    w.abort()
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        w.write(_clip(1, 0))

    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", fps=25, size=(63, 48))
    with pytest.raises(ValueError, match="at least"):
        VideoWriter(tmp_path / "small.mp4", fps=25, size=(8, 8))
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", fps=25, size=(16, 16)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_output_path_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="file.txt"):
        check_output_path(a_file / "out.mp4")  # parent is a file
    with pytest.raises(OutputError, match=r"\.mp4"):
        check_output_path(tmp_path / "out.avi")
    a_dir = tmp_path / "dir.mp4"
    a_dir.mkdir()
    with pytest.raises(OutputError, match="directory"):
        check_output_path(a_dir)
    with pytest.raises(OutputError):
        VideoWriter(a_file / "x.mp4", fps=25, size=(16, 16))
    nested = check_output_path(tmp_path / "a" / "b" / "ok.mp4")
    assert nested.parent.is_dir() and nested.is_absolute()


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"x": [1, 2]})
    write_json_atomic(path, {"x": 3})
    assert json.loads(path.read_text()) == {"x": 3}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"x": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    with pytest.raises(OutputError):
        write_json_atomic(tmp_path / "meta.json" / "x.json", {})


def test_probe_video_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="bad.mp4"):
        probe_video(bad)
