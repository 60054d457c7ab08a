"""EchoMimic v1's audio front end: whisper-tiny encoder states, windowed per video frame.

What EchoMimic computes (read, not copied, from ``antgroup/echomimic`` at commit
a53e97040398ddae5d26df0d2054a8f1e9f9df6d, the MuseTalk whisper fork in ``src/models/whisper``:
``whisper/audio.py`` (``log_mel_spectrogram``, ``pad_or_trim``, ``mel_filters``),
``whisper/transcribe.py`` (the segment loop), ``whisper/model.py`` (``AudioEncoder`` with
``include_embeddings``), ``audio2feature.py`` (``audio2feat``, ``get_sliced_feature``,
``feature2chunks``) and ``src/pipelines/pipeline_echo_mimic.py``; spec: echomimic_memo.md §1.3):

1. a mono float32 waveform at 16 kHz (EchoMimic: ffmpeg s16 / 32768);
2. log-mel of the **whole file**: ``torch.stft`` (n_fft 400, hop 160, periodic Hann, centred with
   reflect padding), ``|X|^2`` with the last STFT frame dropped (``M = N // 160`` frames), the 80-band
   Slaney filterbank of whisper's ``mel_filters.npz`` (here built by
   ``transformers.audio_utils.mel_filter_bank``; the tests pin it against the npz), ``log10`` with a
   1e-10 floor, clamp at (**global** max - 8), then ``(x + 4) / 4``;
3. segments of ``2 * n_audio_ctx`` = 3000 mel frames (30 s), the last one zero-padded (the value 0
   after normalisation, not a silence level), each encoded **independently**;
4. per segment the positional-embedded encoder input and the output of every block, **before**
   ``ln_post``: ``(1500, 5, 384)``, of which the first ``floor(frames / 2)`` rows are kept;
   concatenated over segments: ``(T50, 5, 384)`` at 50 Hz (``T50`` is about samples / 320);
5. video frame ``i`` at ``fps`` (EchoMimic: 24) gets rows ``c - 4 .. c + 5``, ``c = int(i * 50 / fps)``,
   clamped to ``[0, T50 - 1]``: ``(10, 5, 384)`` reshaped to ``(50, 384)``, time-major/layer-minor;
6. frames ``i = 0, 1, ...`` are made until ``int(i * 50 / fps) > T50``; that last frame is kept too.

The encoder is transformers' ``WhisperEncoder`` built from EchoMimic's ``whisper_tiny.pt`` (openai
format ``{"dims", "model_state_dict"}``) through :func:`openai_to_hf_key`. Its
``hidden_states[0 .. n_layers - 1]`` are the encoder input (conv1 -> GELU -> conv2 -> GELU ->
+positions) and the outputs of blocks ``0 .. n_layers - 2``; its last hidden state is taken *after*
``layer_norm`` (= openai's ``ln_post``), so the last block's output is read by a forward pre-hook on
``layer_norm`` instead (the tests check both facts).

Memory: :meth:`WhisperFeatures.forward` follows EchoMimic's order (whole-file mel, all segments),
so it holds ``T50 x 5 x 384`` floats (about 384 kB per second of audio). :class:`WhisperStream`
computes the global maximum in one chunked pass and then the mel and encoder states of only the
segments a clip needs (a small cache of recent segments), so memory is bounded by a few segments.

Differences from EchoMimic:

* The maths is the same (pre-LN blocks, exact GELU, LayerNorm eps 1e-5); openai scales q and k by
  ``head_dim ** -0.25`` each, HF q by ``head_dim ** -0.5``: fp32 results agree to rounding.
* Half precision (fp16/bf16): EchoMimic's rules (fp32 weights cast per op, LayerNorm and softmax in
  fp32), via :mod:`talkfast.audio.whisper_half`, not transformers' fp16 forward.
* Features are returned as float32 (EchoMimic hands fp16 to the UNet); cast them as needed.
* Audio shorter than 320 samples (one 50 Hz row) raises :class:`InputError` (EchoMimic crashes).

transformers' ``WhisperFeatureExtractor`` computes the same log-mel only when called with
``padding="longest", truncation=False`` (no padding; its max is then the whole input's max). By
default it zero-pads the *waveform* to 30 s and truncates longer audio: the padded frames become
``(max - 8 + 4) / 4`` instead of 0, the last frame before the padding sees zeros instead of the
reflected signal (when ``N % 160 < 40``), and only the first 30 s are kept (its max is then that of
the first 30 s). Applied to 30 s chunks one by one, its clamp would use each chunk's own max where
EchoMimic uses the whole file's. Audio exactly 30 s long gives the same result.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkfast.audio.features import SAMPLE_RATE, _as_waveform
from talkfast.audio.whisper_half import echomimic_encoder_states
from talkfast.errors import CheckpointError, InputError

__all__ = [
    "FEATURE_RATE", "WhisperFeatures", "WhisperStream", "convert_openai_state_dict", "hf_to_openai_key",
    "load_whisper_encoder", "openai_to_hf_key", "whisper_config_from_dims", "whisper_frame_count",
    "whisper_log_mel", "whisper_mel_filters", "whisper_rows", "whisper_window_rows", "whisper_windows",
]

N_FFT = 400
HOP_LENGTH = 160
FEATURE_RATE = 50  # encoder rows per second (EchoMimic's hard-coded "50")
WINDOW_BEFORE, WINDOW_AFTER = 4, 5  # rows c-4 .. c+5 (audio_feat_length [2, 2] in audio2feature.py)
WINDOW = WINDOW_BEFORE + WINDOW_AFTER + 1
MIN_SAMPLES = 2 * HOP_LENGTH  # shortest audio that yields one 50 Hz row

_DIM_KEYS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")


# ----------------------------------------------------------------------------------------------
# Log-mel
# ----------------------------------------------------------------------------------------------


def whisper_mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Whisper's filterbank ``(n_mels, n_fft // 2 + 1)`` float32: Slaney mel scale and area
    normalisation, 0 .. sample_rate / 2 (what ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``
    gives and whisper stores as ``mel_filters.npz``), computed by ``transformers.audio_utils.mel_filter_bank``."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=int(n_mels), min_frequency=0.0,
                         max_frequency=sample_rate / 2.0, sampling_rate=int(sample_rate),
                         norm="slaney", mel_scale="slaney")  # (n_freqs, n_mels) float64
    return torch.from_numpy(np.ascontiguousarray(fb.T, dtype=np.float32))


def _log10_power_mel(frames_stft: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    power = frames_stft.abs() ** 2  # (n_freqs, n)
    return torch.clamp(filters @ power, min=1e-10).log10()


def _normalise(log10_mel: torch.Tensor, global_max: torch.Tensor | float) -> torch.Tensor:
    top = torch.as_tensor(global_max, dtype=log10_mel.dtype, device=log10_mel.device)
    return (torch.maximum(log10_mel, top - 8.0) + 4.0) / 4.0


def _check_length(wave: torch.Tensor) -> None:
    if wave.numel() < MIN_SAMPLES:
        raise InputError(
            f"the audio is too short for whisper features: {wave.numel()} samples, need at least "
            f"{MIN_SAMPLES} ({MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz)"
        )


def _waveform(audio) -> torch.Tensor:
    """A 1-D float32 CPU waveform from a tensor/array or a talkfast ``Audio`` (which must be 16 kHz)."""
    if hasattr(audio, "samples") and hasattr(audio, "sample_rate"):
        if int(audio.sample_rate) != SAMPLE_RATE:
            raise InputError(f"whisper features need {SAMPLE_RATE} Hz audio, got {audio.sample_rate} Hz")
        audio = audio.samples
    wave = _as_waveform(audio)
    _check_length(wave)
    return wave


def whisper_log_mel(waveform, filters: torch.Tensor | None = None) -> torch.Tensor:
    """EchoMimic's whole-file log-mel ``(n_mels, N // 160)`` float32 (step 2 of the module docstring)."""
    wave = _waveform(waveform)
    filters = whisper_mel_filters() if filters is None else filters
    window = torch.hann_window(N_FFT)
    stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    log_spec = _log10_power_mel(stft[:, :-1], filters)
    return _normalise(log_spec, log_spec.max())


def _reflect_slice(wave: torch.Tensor, lo: int, hi: int, pad: int) -> torch.Tensor:
    """``F.pad(wave, (pad, pad), mode="reflect")[lo:hi]`` without building the padded copy."""
    n = wave.shape[0]
    idx = torch.arange(lo - pad, hi - pad)
    idx = torch.where(idx < 0, -idx, idx)
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return wave[idx]


def _log10_mel_frames(wave: torch.Tensor, a: int, b: int, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Un-normalised ``log10`` mel of STFT frames ``[a, b)`` of the whole-file centred STFT."""
    half = N_FFT // 2
    chunk = _reflect_slice(wave, a * HOP_LENGTH, (b - 1) * HOP_LENGTH + N_FFT, half)
    stft = torch.stft(chunk, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    return _log10_power_mel(stft, filters)


# ----------------------------------------------------------------------------------------------
# Checkpoint: openai names -> transformers names
# ----------------------------------------------------------------------------------------------

_WHOLE = {
    "encoder.positional_embedding": "encoder.embed_positions.weight",
    "decoder.positional_embedding": "decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "decoder.embed_tokens.weight",
}
_MODULES = {  # openai module path -> HF module path, outside the blocks
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.ln_post": "encoder.layer_norm",
    "decoder.ln": "decoder.layer_norm",
}
_BLOCK_PARTS = {  # inside encoder.blocks.N / decoder.blocks.N
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}
_OPENAI_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_PARAM = re.compile(r"^(.+)\.(weight|bias)$")


def _invert(d: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in d.items()}


def _map_key(name: str, whole: Mapping, modules: Mapping, parts: Mapping, block: re.Pattern, block_word: str) -> str | None:
    if name in whole:
        return whole[name]
    m = block.match(name)
    if m:
        side, n, part, param = m.groups()
        if part not in parts or (side == "encoder" and ("cross_attn" in part or "encoder_attn" in part)):
            return None  # only decoder blocks have cross-attention
        return f"{side}.{block_word}.{n}.{parts[part]}.{param}"
    m = _PARAM.match(name)
    if m and m.group(1) in modules:
        return f"{modules[m.group(1)]}.{m.group(2)}"
    return None


def openai_to_hf_key(name: str) -> str | None:
    """The transformers ``WhisperModel`` name of an openai-whisper state-dict key, or None if unknown.

    ``encoder.blocks.N.attn.query.weight`` -> ``encoder.layers.N.self_attn.q_proj.weight``,
    ``...attn_ln`` -> ``self_attn_layer_norm``, ``mlp.0``/``mlp.2`` -> ``fc1``/``fc2``, ``mlp_ln`` ->
    ``final_layer_norm``, decoder ``cross_attn`` -> ``encoder_attn``, ``encoder.positional_embedding``
    -> ``encoder.embed_positions.weight``, ``encoder.ln_post`` -> ``encoder.layer_norm``,
    ``decoder.token_embedding`` -> ``decoder.embed_tokens``, ``decoder.ln`` -> ``decoder.layer_norm``.
    """
    return _map_key(name, _WHOLE, _MODULES, _BLOCK_PARTS, _OPENAI_BLOCK, "layers")


def hf_to_openai_key(name: str) -> str | None:
    """Inverse of :func:`openai_to_hf_key` (None for a name it cannot produce)."""
    return _map_key(name, _invert(_WHOLE), _invert(_MODULES), _invert(_BLOCK_PARTS), _HF_BLOCK, "blocks")


def _names(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def convert_openai_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole openai-whisper state dict to transformers ``WhisperModel`` names (same tensors).

    Raises :class:`CheckpointError` naming every key that has no transformers counterpart."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state_dict.items():
        hf = openai_to_hf_key(str(name))
        if hf is None:
            unknown.append(str(name))
        else:
            out[hf] = tensor
    if unknown:
        raise CheckpointError(f"whisper checkpoint has keys that are not openai-whisper names: {_names(unknown)}")
    return out


def whisper_config_from_dims(dims: Mapping[str, int]):
    """A transformers ``WhisperConfig`` for openai ``ModelDimensions`` (decoder fields optional)."""
    from transformers import WhisperConfig

    d = int(dims["n_audio_state"])
    vocab = int(dims.get("n_vocab", 51865))
    kwargs = {}
    if vocab <= 50257:  # tiny test vocabularies: the default special-token ids would not fit
        kwargs = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "decoder_start_token_id": 0}
    return WhisperConfig(
        num_mel_bins=int(dims["n_mels"]), max_source_positions=int(dims["n_audio_ctx"]), d_model=d,
        encoder_layers=int(dims["n_audio_layer"]), encoder_attention_heads=int(dims["n_audio_head"]),
        encoder_ffn_dim=4 * d, vocab_size=vocab, max_target_positions=int(dims.get("n_text_ctx", 448)),
        decoder_layers=int(dims.get("n_text_layer", dims["n_audio_layer"])),
        decoder_attention_heads=int(dims.get("n_text_head", dims["n_audio_head"])), decoder_ffn_dim=4 * d,
        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=False, attn_implementation="sdpa", **kwargs,
    )


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    if not path.exists():
        raise CheckpointError(f"whisper checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"whisper checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"could not read the whisper checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, Mapping) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an openai-whisper checkpoint (a dict with 'dims' and 'model_state_dict')")
    dims, sd = ckpt["dims"], ckpt["model_state_dict"]
    if not isinstance(dims, Mapping) or not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: 'dims' and 'model_state_dict' must be dicts")
    missing = [k for k in _DIM_KEYS if k not in dims]
    if missing:
        raise CheckpointError(f"{path}: 'dims' lacks {', '.join(missing)}")
    try:
        dims = {k: int(v) for k, v in dims.items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: 'dims' values must be integers: {exc}") from exc
    if dims["n_audio_state"] % dims["n_audio_head"]:
        raise CheckpointError(f"{path}: n_audio_state {dims['n_audio_state']} is not a multiple of n_audio_head {dims['n_audio_head']}")
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: model_state_dict entries that are not tensors: {_names(not_tensors)}")
    return dims, dict(sd)


def load_whisper_encoder(path, device="cpu", dtype: torch.dtype = torch.float32):
    """transformers ``WhisperEncoder`` (eval, frozen) with the encoder weights of an openai-format
    ``whisper_tiny.pt``, loaded with ``torch.load(weights_only=True)``.

    Every one of the encoder's keys must be present with the right shape (EchoMimic loads the file
    strictly). Decoder keys are recognised and left out (EchoMimic never runs the decoder); a key
    that is not an openai-whisper name, or an encoder key the model does not have, is an error.
    One :class:`CheckpointError` lists every missing, unexpected and wrongly shaped key.
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    path = Path(path).expanduser()
    dims, sd = _read_checkpoint(path)
    config = whisper_config_from_dims(dims)
    encoder = WhisperEncoder(config)
    expected = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    unknown, found = [], {}
    for name, tensor in sd.items():
        hf = openai_to_hf_key(str(name))
        if hf is None or (hf.startswith("encoder.") and hf not in expected):
            unknown.append(str(name))
        elif hf.startswith("encoder."):
            found[hf] = (str(name), tensor)
    missing = [hf_to_openai_key(k) or k for k in expected if k not in found]
    shapes = [
        f"{name} {tuple(t.shape)} (model {tuple(expected[hf].shape)})"
        for hf, (name, t) in sorted(found.items())
        if tuple(t.shape) != tuple(expected[hf].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing: {_names(missing)}")
    if unknown:
        problems.append(f"unexpected: {_names(unknown)}")
    if shapes:
        problems.append(f"wrong shape: {_names(shapes)}")
    if problems:
        raise CheckpointError(f"whisper checkpoint {path} does not match its dims {dims}; " + "; ".join(problems))
    encoder.load_state_dict({hf[len("encoder."):]: t for hf, (_, t) in found.items()}, strict=True)
    encoder.requires_grad_(False)
    return encoder.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------------
# Rows and per-frame windows
# ----------------------------------------------------------------------------------------------


def whisper_rows(mel_frames: int, segment_frames: int = 3000) -> int:
    """``T50`` for ``mel_frames`` log-mel frames: ``floor(n / 2)`` rows per segment of ``n`` frames."""
    full, rest = divmod(int(mel_frames), int(segment_frames))
    return full * (segment_frames // 2) + rest // 2


def _check_fps(fps) -> float:
    fps = float(fps)
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    return fps


def _centre(i: int, fps: float) -> int:
    return int(i * FEATURE_RATE / fps)  # EchoMimic's int(vid_idx * 50 / fps), in Python floats


def whisper_frame_count(t50: int, fps: float = 24.0) -> int:
    """EchoMimic's video frame count (``feature2chunks``): frames until ``int(i * 50 / fps) > T50``, that one included."""
    fps, t50 = _check_fps(fps), int(t50)
    i = max(0, int((t50 + 1) * fps / FEATURE_RATE) - 2)
    while i > 0 and _centre(i - 1, fps) > t50:
        i -= 1
    while _centre(i, fps) <= t50:
        i += 1
    return i + 1


def whisper_window_rows(t50: int, fps: float = 24.0, start: int = 0, frames: int | None = None) -> torch.Tensor:
    """Row indices ``(frames, 10)`` of video frames ``start .. start + frames - 1``: ``c - 4 .. c + 5``,
    ``c = int(i * 50 / fps)``, clamped to ``[0, T50 - 1]``; ``frames`` defaults to the rest of
    :func:`whisper_frame_count`."""
    fps, t50 = _check_fps(fps), int(t50)
    if t50 < 1:
        raise InputError("no whisper feature rows (the audio is too short)")
    if start < 0 or (frames is not None and frames < 0):
        raise InputError(f"need start >= 0 and frames >= 0, got start {start}, frames {frames}")
    if frames is None:
        frames = max(0, whisper_frame_count(t50, fps) - start)
    centres = torch.tensor([_centre(i, fps) for i in range(start, start + int(frames))], dtype=torch.long)
    offsets = torch.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1, dtype=torch.long)
    return (centres[:, None] + offsets[None, :]).clamp(0, t50 - 1)


def whisper_windows(feats: torch.Tensor, fps: float = 24.0, start: int = 0, frames: int | None = None) -> torch.Tensor:
    """``(T50, L, D)`` encoder states -> ``(frames, 10 * L, D)`` per-frame tokens, time-major/layer-minor."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 3:
        raise InputError("whisper_windows expects encoder states of shape (T50, layers, dim)")
    rows = whisper_window_rows(feats.shape[0], fps, start, frames).to(feats.device)
    out = feats[rows.reshape(-1)]  # (frames * 10, L, D)
    return out.reshape(rows.shape[0], WINDOW * feats.shape[1], feats.shape[2])


# ----------------------------------------------------------------------------------------------
# The extractor
# ----------------------------------------------------------------------------------------------


class WhisperFeatures(torch.nn.Module):
    """EchoMimic's whisper features: ``forward(waveform, S=None) -> (S, 50, 384)`` float32.

    ``checkpoint`` is EchoMimic's ``audio_processor/whisper_tiny.pt``; nothing is downloaded.
    ``forward`` returns the per-frame tokens already windowed (steps 5-6 of the module docstring);
    ``S`` defaults to EchoMimic's frame count, and frames past the audio reuse the clamped last row.
    :meth:`encoder_states` gives the ``(T50, 5, 384)`` rows, :meth:`stream` a memory-bounded view
    (:class:`WhisperStream`) and :meth:`clip` the tokens of one clip from it.

    Attributes: ``layers`` (encoder states per row: input + blocks = 5), ``window`` (10 rows),
    ``tokens`` (50 per frame), ``dim`` (384), ``segment_frames`` (3000 mel frames), ``fps``.
    The encoder stays in eval mode and frozen.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *, fps: float = 24.0) -> None:
        super().__init__()
        # half precision: fp32 weights cast per op, as EchoMimic runs it (echomimic_encoder_states)
        self.compute_dtype = dtype
        self.encoder = load_whisper_encoder(checkpoint, device=device,
                                            dtype=torch.float32 if self.half else dtype)
        cfg = self.encoder.config
        self.fps = _check_fps(fps)
        self.layers = int(cfg.encoder_layers) + 1
        self.window = WINDOW
        self.tokens = WINDOW * self.layers
        self.dim = int(cfg.d_model)
        self.segment_frames = 2 * int(cfg.max_source_positions)
        # Plain attributes, not buffers: the mel is always computed on the CPU in fp32, as EchoMimic does.
        self.mel_filters = whisper_mel_filters(int(cfg.num_mel_bins))
        self.stft_window = torch.hann_window(N_FFT)

    def train(self, mode: bool = True) -> WhisperFeatures:
        super().train(mode)
        self.encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def half(self) -> bool:
        return self.compute_dtype in (torch.float16, torch.bfloat16)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoder computes in (its weights stay fp32 in half precision)."""
        return self.compute_dtype if self.half else self.encoder.conv1.weight.dtype

    def log_mel(self, waveform) -> torch.Tensor:
        """Whole-file normalised log-mel ``(n_mels, N // 160)`` (step 2)."""
        return whisper_log_mel(waveform, self.mel_filters)

    @torch.no_grad()
    def encode_segment(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder states ``(floor(n / 2), 5, 384)`` float32 of one normalised mel segment ``(n_mels, n)``,
        ``n <= segment_frames``, zero-padded to ``segment_frames`` (steps 3-4)."""
        n = mel.shape[-1]
        if mel.ndim != 2 or not 0 < n <= self.segment_frames:
            raise InputError(f"expected a mel segment (n_mels, 1..{self.segment_frames}), got {tuple(mel.shape)}")
        x = F.pad(mel, (0, self.segment_frames - n))[None].to(device=self.device, dtype=self.dtype)
        if self.half:
            return echomimic_encoder_states(self.encoder, x)[0, : n // 2].float()
        captured = []
        hook = self.encoder.layer_norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            out = self.encoder(input_features=x, output_hidden_states=True, return_dict=True)
        finally:
            hook.remove()
        hidden = out.hidden_states
        if hidden is None or len(hidden) != self.layers or len(captured) != 1:
            raise RuntimeError(f"expected {self.layers} encoder hidden states and one ln_post input from transformers, "
                               f"got {None if hidden is None else len(hidden)} and {len(captured)}")
        states = torch.stack([*hidden[:-1], captured[0]], dim=2)[0]  # (n_ctx, 5, D)
        return states[: n // 2].float()

    @torch.no_grad()
    def encoder_states(self, waveform) -> torch.Tensor:
        """All rows ``(T50, 5, 384)``, EchoMimic's ``audio2feat``: whole-file mel, every segment encoded."""
        mel = self.log_mel(waveform)
        parts = [self.encode_segment(mel[:, s : s + self.segment_frames])
                 for s in range(0, mel.shape[-1], self.segment_frames)]
        return torch.cat(parts, dim=0)

    @torch.no_grad()
    def forward(self, waveform, num_frames: int | None = None, fps: float | None = None) -> torch.Tensor:
        feats = self.encoder_states(waveform)
        return whisper_windows(feats, self.fps if fps is None else fps, 0, num_frames)

    def stream(self, waveform, cache_segments: int = 2) -> WhisperStream:
        """A :class:`WhisperStream` over ``waveform`` (a tensor/array or a 16 kHz talkfast ``Audio``)."""
        return WhisperStream(self, waveform, cache_segments=cache_segments)

    def clip(self, waveform, start: int, frames: int, fps: float | None = None) -> torch.Tensor:
        """Tokens ``(frames, 50, 384)`` of video frames ``[start, start + frames)``, encoding only the
        segments they need (for many clips of one file keep a :meth:`stream` instead)."""
        return self.stream(waveform, cache_segments=0).clip(start, frames, fps)


class WhisperStream:
    """Whisper features of one waveform, computed one 30 s segment at a time.

    The global log-mel maximum (step 2) is found in one chunked pass over the waveform (no whole
    mel is held); after that, :meth:`rows` / :meth:`clip` compute the mel frames and encoder states
    of only the segments that hold the requested rows. The ``cache_segments`` most recently used
    segments are kept, so consecutive clips do not re-encode a shared segment. Results equal
    :meth:`WhisperFeatures.forward` (the mel frames agree to float32 rounding). ``encoded`` counts
    the segments run through the encoder so far.
    """

    def __init__(self, features: WhisperFeatures, waveform, cache_segments: int = 2) -> None:
        self.features = features
        self.wave = _waveform(waveform)
        self.mel_frames = self.wave.shape[0] // HOP_LENGTH
        self.segment_frames = features.segment_frames
        self.rows_per_segment = self.segment_frames // 2
        self.num_segments = math.ceil(self.mel_frames / self.segment_frames)
        self.t50 = whisper_rows(self.mel_frames, self.segment_frames)
        self.cache_segments = max(0, int(cache_segments))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._max: torch.Tensor | None = None
        self.encoded = 0

    def num_frames(self, fps: float | None = None) -> int:
        """EchoMimic's frame count for this audio."""
        return whisper_frame_count(self.t50, self.features.fps if fps is None else fps)

    def _frame_range(self, k: int) -> tuple[int, int]:
        a = k * self.segment_frames
        return a, min(a + self.segment_frames, self.mel_frames)

    @property
    def log_mel_max(self) -> torch.Tensor:
        """The whole file's maximum ``log10`` mel value (the clamp reference of step 2)."""
        if self._max is None:
            f = self.features
            self._max = torch.stack([
                _log10_mel_frames(self.wave, *self._frame_range(k), f.mel_filters, f.stft_window).max()
                for k in range(self.num_segments)
            ]).max()
        return self._max

    def segment_mel(self, k: int) -> torch.Tensor:
        """Normalised log-mel ``(n_mels, n)`` of segment ``k`` (before zero-padding)."""
        if not 0 <= k < self.num_segments:
            raise IndexError(f"segment {k} out of range (0..{self.num_segments - 1})")
        f = self.features
        log10_mel = _log10_mel_frames(self.wave, *self._frame_range(k), f.mel_filters, f.stft_window)
        return _normalise(log10_mel, self.log_mel_max)

    def segment(self, k: int) -> torch.Tensor:
        """Encoder states ``(rows_k, 5, 384)`` of segment ``k`` (rows ``1500 k ..``)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        states = self.features.encode_segment(self.segment_mel(k))
        self.encoded += 1
        if self.cache_segments:
            self._cache[k] = states
            while len(self._cache) > self.cache_segments:
                self._cache.popitem(last=False)
        return states

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Encoder states ``(*index.shape, 5, 384)`` of the given rows (each in ``[0, T50)``)."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.t50):
            raise IndexError(f"rows must lie in [0, {self.t50})")
        flat = index.reshape(-1)
        seg = torch.div(flat, self.rows_per_segment, rounding_mode="floor")
        out = None
        for k in torch.unique(seg).tolist():
            states = self.segment(int(k))
            sel = (seg == k).nonzero(as_tuple=True)[0]
            if out is None:
                out = states.new_empty((flat.numel(), *states.shape[1:]))
            out[sel.to(out.device)] = states[(flat[sel] - k * self.rows_per_segment).to(states.device)]
        if out is None:
            f = self.features
            out = torch.empty((0, f.layers, f.dim), device=f.device)
        return out.reshape(*index.shape, *out.shape[1:])

    @torch.no_grad()
    def clip(self, start: int, frames: int, fps: float | None = None) -> torch.Tensor:
        """Tokens ``(frames, 50, 384)`` of video frames ``[start, start + frames)``; equal to
        ``features(waveform, start + frames)[start:]``."""
        rows = whisper_window_rows(self.t50, self.features.fps if fps is None else fps, start, frames)
        feats = self.rows(rows)  # (frames, 10, 5, D)
        return feats.reshape(rows.shape[0], -1, feats.shape[-1])

    def clips(self, clip_frames: int, num_frames: int | None = None, fps: float | None = None,
              ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, tokens)`` for consecutive clips of ``clip_frames`` frames covering ``num_frames``
        (default: EchoMimic's count); the last clip may be shorter."""
        if clip_frames < 1:
            raise InputError(f"clip_frames must be >= 1, got {clip_frames}")
        total = self.num_frames(fps) if num_frames is None else int(num_frames)
        for start in range(0, total, clip_frames):
            yield start, self.clip(start, min(clip_frames, total - start), fps)
