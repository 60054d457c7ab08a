"""Vocal separation with an MDX-Net ONNX model (the user's ``Kim_Vocal_2.onnx``), as Hallo and MEMO do it.

Hallo and MEMO run their driving audio through python-audio-separator's MDX path before wav2vec2.
This module is our own implementation of that path (onnxruntime on CPU; no audio-separator at run
time), matched line by line against:

- python-audio-separator ``v0.17.2`` (Hallo's pin) and ``v0.24.1`` (MEMO's pin):
  ``separator/separator.py`` (defaults: 44.1 kHz, ``normalization_threshold`` 0.9, 0.24.1 also
  ``amplification_threshold`` 0.6; MDX defaults hop 1024, segment 256, overlap 0.25, batch 1, no
  denoise; model parameters looked up by the md5 of the model file's last 10,000 KiB),
  ``separator/common_separator.py`` (``prepare_mix``: ``librosa.load(mono=False, sr=44100)``, mono
  duplicated to stereo, an all-zero file rejected; ``write_audio``: peak normalisation,
  near-silent output not written, ``(x * 32767).astype(int16)``, 16-bit stereo WAV),
  ``separator/architectures/mdx_separator.py`` (``separate``, ``demix``, ``run_model``),
  ``separator/uvr_lib_v5/stft.py`` (``STFT``) and ``uvr_lib_v5/spec_utils.py`` (``normalize``).
- Hallo 8fd7c57 ``hallo/datasets/audio_processor.py`` (``AudioProcessor.preprocess``) and
  ``hallo/utils/util.py`` (``resample_audio``: ``ffmpeg -y -v error -i IN -ar 16000 OUT``), then
  ``librosa.load(OUT, sr=16000)`` (channels averaged).
- MEMO a5aee30 ``inference.py`` (the input itself first goes through ``resample_audio`` to 16 kHz)
  and ``memo/utils/audio_utils.py`` (``preprocess_audio``: separation, ``resample_audio``,
  ``librosa.load(sr=16000)``).
- Kim_Vocal_2's parameters: UVR's model table (TRvlvr/application_data
  ``mdx_model_data/model_data_new.json``, the file audio-separator downloads), entry
  ``970b3f9492014d18fefeedfe4773cb42``; that this hash is Kim_Vocal_2.onnx's is listed in
  python-audio-separator ``docs/deton24-audio-separation-info-2026-03-15.md`` ("Kim_vocal_2.onnx
  970b3f9492014d18fefeedfe4773cb42").

Chains (what ``separate_vocals`` returns is what wav2vec2's feature extractor reads)::

    hallo: librosa 44.1 kHz soxr_hq (mono -> stereo) -> peak cap 0.9 -> demix x compensate
           -> cap 0.9 -> cap 0.9 -> int16 (truncation) -> 44.1 kHz stereo WAV
           -> ffmpeg -ar 16000 -> librosa 16 kHz (channel mean)
    memo:  ffmpeg -ar 16000 of the input -> (same as hallo, but every peak step also raises a
           peak below 0.6 to 0.6)

Model parameters: looked up by audio-separator's md5 in :data:`MDX_MODEL_DATA` (Kim_Vocal_2 only).
An unknown md5 is a :class:`CheckpointError` unless the caller passes ``params`` explicitly: dim_f
and dim_t could be read from the ONNX input shape, but n_fft and the compensation factor cannot
(UVR models with dim_f 3072 use n_fft 6144 or 7680 and a dozen compensation values), and a guess
would silently change the vocals.

Deliberate differences: audio-separator's second demix pass (the "match mix" pass that only feeds
the instrumental stem) is skipped, as its result is never written when only vocals are asked for.
An all-silent separated output raises :class:`InputError` (Hallo's separator writes no file there
and Hallo then fails in ffmpeg; MEMO's 0.6 amplification divides by zero).

Memory: the whole input is held (librosa loads it whole, as the original does), plus one
output-sized float32 buffer and one divider row; each model call sees one chunk (255 * 1024
samples), so no per-chunk stack or whole-file spectrogram is ever built.
"""

from __future__ import annotations

import hashlib
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from talkfast.errors import CheckpointError, InputError

Chain = Literal["hallo", "memo"]

SAMPLE_RATE = 44100  # audio-separator's default sample_rate (both pins)
TARGET_RATE = 16000  # what Hallo and MEMO resample the vocals to for wav2vec2
NORMALIZATION_THRESHOLD = 0.9  # Separator(normalization_threshold=0.9), both pins
AMPLIFICATION_THRESHOLD = 0.6  # Separator(amplification_threshold=0.6), 0.24.1 only (MEMO)
KIM_VOCAL_2_MD5 = "970b3f9492014d18fefeedfe4773cb42"
_HASH_TAIL_BYTES = 10000 * 1024  # audio-separator hashes the file's last 10,000 KiB
_FFMPEG_TIMEOUT_S = 3600


@dataclass(frozen=True)
class MDXParams:
    """One MDX-Net model's parameters as audio-separator uses them.

    ``dim_f``/``dim_t``/``n_fft``/``compensate``/``primary_stem`` come from UVR's table
    (``mdx_dim_f_set``, ``2 ** mdx_dim_t_set``, ``mdx_n_fft_scale_set``, ``compensate``,
    ``primary_stem``); ``hop_length``/``segment_size``/``overlap`` are audio-separator's MDX defaults.
    """

    dim_f: int
    dim_t: int
    n_fft: int
    compensate: float
    primary_stem: str = "Vocals"
    hop_length: int = 1024
    segment_size: int = 256
    overlap: float = 0.25

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def chunk_size(self) -> int:
        return self.hop_length * (self.segment_size - 1)

    @property
    def gen_size(self) -> int:
        return self.chunk_size - 2 * self.trim


# md5 (audio-separator's tail hash) -> parameters. Values: UVR model_data_new.json (see module doc).
MDX_MODEL_DATA: dict[str, MDXParams] = {
    KIM_VOCAL_2_MD5: MDXParams(dim_f=3072, dim_t=2**8, n_fft=7680, compensate=1.009, primary_stem="Vocals"),
}


def model_hash(model_file: Path) -> str:
    """audio-separator's model hash: md5 of the file's last 10,000 KiB (whole file if smaller)."""
    path = Path(model_file)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _HASH_TAIL_BYTES))
            return hashlib.md5(f.read()).hexdigest()
    except OSError as err:
        raise CheckpointError(f"vocal separator model {path}: cannot read it ({err})") from err


class MDXModel:
    """An MDX-Net ONNX model in an onnxruntime CPU session, checked against its parameters."""

    def __init__(self, model_file: Path, params: MDXParams | None = None, threads: int | None = None):
        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(f"vocal separator model {path} not found")
        if params is None:
            digest = model_hash(path)
            params = MDX_MODEL_DATA.get(digest)
            if params is None:
                raise CheckpointError(
                    f"vocal separator model {path}: unknown MDX-Net model (md5 of the last 10,000 KiB "
                    f"{digest}); only Kim_Vocal_2.onnx ({KIM_VOCAL_2_MD5}) is known. Use the original "
                    "Kim_Vocal_2.onnx, or pass its parameters (MDXParams) explicitly."
                )
        if params.primary_stem != "Vocals":
            raise CheckpointError(
                f"vocal separator model {path} separates {params.primary_stem!r} as its primary stem; only "
                "models whose primary stem is 'Vocals' (as Kim_Vocal_2) are supported"
            )
        self.path = path
        self.params = params
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise CheckpointError(
                "vocal separation needs the 'onnxruntime' package (pip install onnxruntime, or the 'prep' extra)"
            ) from err
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for corrupt / non-ONNX files
            raise CheckpointError(f"vocal separator model {path} is not a readable ONNX model ({err})") from err
        inputs = self._session.get_inputs()
        want = [1, 4, params.dim_f, params.dim_t]
        if (
            len(inputs) != 1
            or inputs[0].name != "input"
            or inputs[0].type != "tensor(float)"
            or not _shape_matches(inputs[0].shape, want)
        ):
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise CheckpointError(
                f"vocal separator model {path} has inputs {got}; an MDX-Net model must take one float input "
                f"'input' of shape [batch, 4, {params.dim_f}, {params.dim_t}]"
            )
        outputs = self._session.get_outputs()
        # An output shape the file does not declare is checked on the first run instead.
        if not outputs or (outputs[0].shape and not _shape_matches(outputs[0].shape, want)):
            got = [(o.name, o.shape) for o in outputs]
            raise CheckpointError(
                f"vocal separator model {path} has outputs {got}; expected [batch, 4, {params.dim_f}, {params.dim_t}]"
            )

    def __call__(self, spec: np.ndarray) -> np.ndarray:
        """Run the network on a spectrogram batch [B, 4, dim_f, dim_t] (float32); returns the same shape."""
        spec = np.ascontiguousarray(spec, dtype=np.float32)
        try:
            out = self._session.run(None, {"input": spec})[0]
        except Exception as err:  # onnxruntime's own errors: a graph that cannot run on this input
            raise CheckpointError(f"vocal separator model {self.path} failed to run ({err})") from err
        out = np.asarray(out, dtype=np.float32)
        if out.shape != spec.shape:
            raise CheckpointError(
                f"vocal separator model {self.path} returned shape {list(out.shape)} for input {list(spec.shape)}"
            )
        return out


def _shape_matches(shape, want) -> bool:
    if shape is None or len(shape) != len(want):
        return False
    # Symbolic axes (strings / None) accept anything; the batch axis, when fixed, must be 1 (batch_size 1).
    return all(not isinstance(got, int) or got == exp for got, exp in zip(shape, want))


# ---------------------------------------------------------------------------------------------
# STFT as audio-separator's uvr_lib_v5.stft.STFT (torch.stft/istft, periodic Hann, centred).


def mdx_stft(wave_: np.ndarray, n_fft: int, hop_length: int, dim_f: int) -> np.ndarray:
    """[..., 2, T] float32 -> [..., 4, dim_f, frames]: channels (L re, L im, R re, R im), bins cut at dim_f."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(wave_, dtype=np.float32))
    lead = x.shape[:-2]
    channels, length = x.shape[-2:]
    window = torch.hann_window(n_fft, periodic=True)
    spec = torch.stft(x.reshape(-1, length), n_fft=n_fft, hop_length=hop_length, window=window,
                      center=True, return_complex=True)
    spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [B*C, 2, F, frames]
    spec = spec.reshape(*lead, channels * 2, spec.shape[-2], spec.shape[-1])
    return spec[..., :dim_f, :].numpy()


def mdx_istft(spec: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """[..., 4, dim_f, frames] -> [..., 2, hop * (frames - 1)] float32 (missing high bins are zeros)."""
    import torch

    s = torch.as_tensor(np.ascontiguousarray(spec, dtype=np.float32))
    lead = s.shape[:-3]
    channels, bins, frames = s.shape[-3:]
    n_bins = n_fft // 2 + 1
    full = torch.zeros((*lead, channels, n_bins, frames), dtype=torch.float32)
    full[..., :bins, :] = s
    full = full.reshape(-1, 2, n_bins, frames).permute(0, 2, 3, 1)
    cplx = full[..., 0] + full[..., 1] * 1.0j  # as audio-separator builds it
    window = torch.hann_window(n_fft, periodic=True)
    out = torch.istft(cplx, n_fft=n_fft, hop_length=hop_length, window=window, center=True)
    return out.reshape(*lead, 2, -1).numpy()


def run_chunk(chunk: np.ndarray, model: Callable[[np.ndarray], np.ndarray], params: MDXParams) -> np.ndarray:
    """audio-separator's ``run_model`` for one chunk [2, chunk_size]: STFT, zero bins 0-2, net, ISTFT."""
    spec = mdx_stft(chunk[None], params.n_fft, params.hop_length, params.dim_f)
    spec[:, :, :3, :] *= 0
    pred = model(spec)
    return mdx_istft(pred, params.n_fft, params.hop_length)[0]


def demix(mix: np.ndarray, model: Callable[[np.ndarray], np.ndarray], params: MDXParams) -> np.ndarray:
    """audio-separator's MDX ``demix`` (not match-mix) of a stereo float32 mix [2, N], compensate included.

    The mix is padded with ``trim`` zeros in front and ``gen_size + trim - N % gen_size`` behind; chunks
    of ``chunk_size`` start every ``int((1 - overlap) * chunk_size)`` samples up to the padded end (the
    last ones shorter, zero-filled for the net); each output chunk is weighted by ``np.hanning`` of its
    true length, summed, divided by the summed windows, cut back to the input, then x compensate.
    Float32 accumulation in the same order as the original (window products in float64, as numpy
    computes ``float32 *= float64``). Only the kept part [trim, trim + N) is stored.
    """
    mix = np.asarray(mix, dtype=np.float32)
    if mix.ndim != 2 or mix.shape[0] != 2:
        raise ValueError(f"demix expects a [2, N] mix, got {mix.shape}")
    n = mix.shape[1]
    trim, chunk, gen = params.trim, params.chunk_size, params.gen_size
    pad = gen + trim - (n % gen)
    total = trim + n + pad
    step = int((1 - params.overlap) * chunk)
    result = np.zeros((2, n), dtype=np.float32)
    divider = np.zeros(n, dtype=np.float32)
    buf = np.zeros((2, chunk), dtype=np.float32)
    for start in range(0, total, step):
        end = min(start + chunk, total)
        size = end - start
        window = np.hanning(size) if params.overlap != 0 else None
        # Padded-mixture samples [start, end) are mix samples [start - trim, end - trim).
        buf[:] = 0
        src_lo, src_hi = max(0, start - trim), min(n, end - trim)
        if src_hi > src_lo:
            buf[:, src_lo - (start - trim) : src_hi - (start - trim)] = mix[:, src_lo:src_hi]
        out = run_chunk(buf, model, params)
        if window is not None:
            np.multiply(out[:, :size], window, out=out[:, :size], casting="same_kind")
        # Keep only padded positions [trim, trim + n), i.e. output index = position - trim.
        lo, hi = max(start, trim), min(end, trim + n)
        if hi <= lo:
            continue
        if window is not None:
            np.add(divider[lo - trim : hi - trim], window[lo - start : hi - start],
                   out=divider[lo - trim : hi - trim], casting="same_kind")
        else:
            divider[lo - trim : hi - trim] += 1
        result[:, lo - trim : hi - trim] += out[:, lo - start : hi - start]
    np.divide(result, divider, out=result)
    result *= params.compensate
    return result


# ---------------------------------------------------------------------------------------------
# Peak steps and the 16-bit write, as audio-separator's spec_utils.normalize / write_audio.


def normalize_peak(wave_: np.ndarray, max_peak: float, min_peak: float | None = None) -> np.ndarray:
    """``spec_utils.normalize`` in place: scale down to ``max_peak`` if above it; up to ``min_peak`` if below.

    The factor is computed as NumPy 1.x did for the originals (``python float / float32`` in float64,
    then rounded to float32 by the in-place multiply), independent of the NumPy installed here.
    """
    maxv = np.abs(wave_).max()
    if maxv > max_peak:
        factor = max_peak / float(maxv)
    elif min_peak is not None and maxv < min_peak:
        if maxv == 0:
            raise InputError("the separated audio is all zeros")
        factor = min_peak / float(maxv)
    else:
        return wave_
    wave_ *= np.float32(factor)
    return wave_


def to_int16(wave_: np.ndarray) -> np.ndarray:
    """``(x * 32767).astype(np.int16)``: truncation toward zero, as audio-separator's write_audio."""
    return (np.asarray(wave_, dtype=np.float32) * np.float32(32767)).astype(np.int16)


def _write_wav_int16(path: Path, stereo: np.ndarray, rate: int) -> None:
    """Write [N, 2] int16 as a 16-bit stereo PCM WAV (what pydub's wav export writes)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(stereo, dtype="<i2").tobytes())


# ---------------------------------------------------------------------------------------------
# File steps: librosa loads and the originals' ffmpeg resample.


def _librosa():
    try:
        import librosa
    except ImportError as err:
        raise InputError("vocal separation needs the 'librosa' package (pip install librosa, or the 'prep' extra)") from err
    return librosa


def load_mix(path: Path) -> np.ndarray:
    """``prepare_mix``: librosa at 44.1 kHz (soxr_hq), channels kept; mono duplicated; [2, N] float32."""
    librosa = _librosa()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file {path} not found")
    try:
        mix, _ = librosa.load(str(path), mono=False, sr=SAMPLE_RATE, res_type="soxr_hq")
    except Exception as err:  # soundfile / audioread / decoder errors
        raise InputError(f"audio file {path} cannot be read ({err})") from err
    mix = np.asarray(mix, dtype=np.float32)
    if mix.size == 0 or not np.any(mix):
        raise InputError(f"audio file {path} is empty or silent")
    if mix.ndim == 1:
        mix = np.stack([mix, mix])
    if mix.shape[0] != 2:
        raise InputError(f"audio file {path} has {mix.shape[0]} channels; the vocal separator takes mono or stereo")
    return mix


def ffmpeg_resample(src: Path, dst: Path, rate: int = TARGET_RATE) -> Path:
    """The originals' ``resample_audio``: ``ffmpeg -y -v error -i SRC -ar RATE DST`` (imageio-ffmpeg's binary).

    ``-nostdin`` is added (ffmpeg must not read our stdin); it does not change the output. Channels
    and the WAV muxer's default codec (16-bit PCM) are ffmpeg's defaults, as in the originals.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:
        raise InputError(f"ffmpeg is unavailable ({err}); it is needed to resample {src}") from err
    cmd = [exe, "-nostdin", "-y", "-v", "error", "-i", str(src), "-ar", str(rate), str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InputError(f"audio file {src}: ffmpeg failed ({err})") from err
    if proc.returncode != 0 or not Path(dst).is_file():
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"audio file {src} cannot be resampled by ffmpeg ({lines[-1] if lines else proc.returncode})")
    return Path(dst)


def load_16k_mono(path: Path) -> np.ndarray:
    """``librosa.load(path, sr=16000)`` as Hallo/MEMO read the vocals: channels averaged, float32."""
    librosa = _librosa()
    try:
        y, _ = librosa.load(str(path), sr=TARGET_RATE)
    except Exception as err:
        raise InputError(f"audio file {path} cannot be read ({err})") from err
    return np.asarray(y, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The chains.


def _check_chain(chain: str) -> None:
    if chain not in ("hallo", "memo"):
        raise ValueError(f"chain must be 'hallo' or 'memo', got {chain!r}")


def separate_mix(
    mix: np.ndarray,
    model: Callable[[np.ndarray], np.ndarray],
    params: MDXParams,
    chain: Chain,
    inplace: bool = False,
) -> np.ndarray:
    """Separator steps on a loaded [2, N] float32 mix -> the int16 [N, 2] vocals audio-separator writes.

    Input peak step, demix (x compensate), the primary-source peak step, write_audio's peak step, the
    silent-output check, int16 truncation. ``chain`` picks 0.17.2 (hallo: cap 0.9) or 0.24.1 (memo: cap
    0.9, raise to 0.6). ``inplace=True`` lets the input peak step scale ``mix`` itself (saves a copy).
    """
    _check_chain(chain)
    min_peak = AMPLIFICATION_THRESHOLD if chain == "memo" else None
    mix = np.asarray(mix, dtype=np.float32) if inplace else np.array(mix, dtype=np.float32)
    mix = normalize_peak(mix, NORMALIZATION_THRESHOLD, min_peak)
    source = demix(mix, model, params)
    if not np.any(source):
        raise InputError("the vocal separator found no vocals (its output is silent)")
    primary = normalize_peak(source, NORMALIZATION_THRESHOLD, min_peak).T
    primary = normalize_peak(primary, NORMALIZATION_THRESHOLD, min_peak)
    if chain == "hallo" and np.max(np.abs(primary)) < 1e-6:
        raise InputError("the vocal separator found no vocals (its output is near-silent)")
    return to_int16(primary)


def input_copy_16k(path: Path, workdir: Path) -> Path:
    """MEMO's 16 kHz copy of the input (``ffmpeg -ar 16000``, named as MEMO names it) in ``workdir``;
    made once per ``workdir``: the separator and MEMO's emotion labels both read it."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    out = Path(workdir) / f"{Path(path).name.split('.')[0] or 'audio'}-16k.wav"
    return out if out.is_file() else ffmpeg_resample(path, out)


def separate_to_wav(
    path: Path,
    model_file: Path | MDXModel,
    chain: Chain,
    workdir: Path,
    params: MDXParams | None = None,
) -> Path:
    """Run the separator part of a chain on ``path``; returns the 44.1 kHz 16-bit stereo vocals WAV in ``workdir``.

    For ``memo`` the input is first resampled to 16 kHz by ffmpeg (MEMO's ``inference.py``), then read
    back at 44.1 kHz like any input. File names follow the originals'.
    """
    _check_chain(chain)
    path = Path(path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The model first, as the originals load the separator before they read the audio.
    model = model_file if isinstance(model_file, MDXModel) else MDXModel(model_file, params)
    if not path.is_file():
        raise InputError(f"audio file {path} not found")
    source_file = input_copy_16k(path, workdir) if chain == "memo" else path
    vocals = separate_mix(load_mix(source_file), model, model.params, chain, inplace=True)
    model_name = model.path.name.split(".")[0]
    out = workdir / f"{source_file.stem}_({model.params.primary_stem})_{model_name}.wav"
    _write_wav_int16(out, vocals, SAMPLE_RATE)
    return out


def separate_vocals(
    path: Path,
    model_file: Path | MDXModel,
    chain: Chain,
    workdir: Path,
    params: MDXParams | None = None,
) -> np.ndarray:
    """The vocals Hallo (``chain='hallo'``) or MEMO (``'memo'``) feed to wav2vec2: float32 mono at 16 kHz.

    ``model_file`` is the user's Kim_Vocal_2.onnx (or an :class:`MDXModel` already loaded);
    ``params`` overrides the md5 lookup (needed for any other MDX-Net model). Intermediate files go
    to ``workdir``. Raises CheckpointError for a bad model file, InputError for unreadable audio.
    """
    wav44 = separate_to_wav(path, model_file, chain, workdir, params)
    wav16 = ffmpeg_resample(wav44, wav44.with_name(f"{wav44.stem}-16k.wav"))
    return load_16k_mono(wav16)
