"""Per-video-frame audio features.

Every extractor takes a mono float32 waveform at 16 kHz (numpy array or tensor, shape ``(N,)``
or ``(1, N)``) and a frame count ``S`` (the caller uses ``S = ceil(seconds * fps)``) and returns
a float32 tensor ``(S, L, D)``: ``L`` feature layers of ``D`` dims per video frame.

* :class:`MelFeatures`: log-mel spectrogram in pure torch, no weights (the default for our small
  models), ``L = 1``, ``D = k * 80`` with ``k`` mel frames per video frame (4 at 25 fps).
* :class:`Wav2Vec2Features`: Hallo's wav2vec2 features (all transformer layers of a local
  ``Wav2Vec2Model`` checkpoint, CNN features interpolated to the video frame rate), ``(S, 12, 768)``
  for wav2vec2-base-960h.

:func:`window_features` then gives each frame its neighbours (Hallo: frames i-2..i+2).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkfast.errors import CheckpointError, InputError

__all__ = [
    "SAMPLE_RATE",
    "MelFeatures",
    "Wav2Vec2Features",
    "window_features",
    "build_audio_features",
    "mel_filterbank",
]

SAMPLE_RATE = 16000


def _as_waveform(waveform) -> torch.Tensor:
    """A 1-D float32 CPU tensor from a numpy array / tensor of shape (N,) or (1, N)."""
    if isinstance(waveform, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(waveform))
    elif isinstance(waveform, torch.Tensor):
        t = waveform.detach().cpu()
    else:
        raise InputError(f"expected the waveform as a numpy array or torch tensor, got {type(waveform).__name__}")
    if t.ndim == 2 and 1 in t.shape:
        t = t.reshape(-1)
    if t.ndim != 1:
        raise InputError(f"expected a mono waveform of shape (N,) or (1, N), got shape {tuple(t.shape)}")
    if t.dtype == torch.int16:  # raw 16-bit PCM
        t = t.to(torch.float32) / 32768.0
    elif not t.is_floating_point():
        raise InputError(f"expected a float waveform in [-1, 1] (or int16 PCM), got dtype {t.dtype}")
    t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise InputError("the waveform contains NaN or infinite values")
    return t


def _check_frames(num_frames) -> int:
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or int(num_frames) < 1:
        raise InputError(f"the number of video frames must be a positive integer, got {num_frames!r}")
    return int(num_frames)


def _fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or trim ``wave`` to ``length`` samples."""
    n = wave.shape[-1]
    if n < length:
        return F.pad(wave, (0, length - n))
    return wave[..., :length]


# ----------------------------------------------------------------------------------------------
# Log-mel features
# ----------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray, htk: bool) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4).
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray, htk: bool) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 400,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filterbank ``(n_fft // 2 + 1, n_mels)`` (float32).

    Defaults give the Slaney-style bank (Slaney mel scale, each triangle normalised to unit area
    via ``2 / (f_right - f_left)``), the same as ``librosa.filters.mel`` and Whisper's filters.
    ``htk=True`` uses the HTK mel scale; ``norm=None`` leaves the triangles with peak 1.
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(f_min, htk), _hz_to_mel(f_max, htk), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts, htk)
    left, centre, right = hz_pts[:-2, None], hz_pts[1:-1, None], hz_pts[2:, None]
    up = (fft_freqs[None, :] - left) / (centre - left)
    down = (right - fft_freqs[None, :]) / (right - centre)
    weights = np.maximum(0.0, np.minimum(up, down))  # (n_mels, n_freqs)
    if norm == "slaney":
        weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return weights.T.astype(np.float32)


class MelFeatures(torch.nn.Module):
    """Log-mel features grouped per video frame: ``forward(waveform, S) -> (S, 1, k * n_mels)``.

    * STFT: ``torch.stft`` with a periodic Hann window of ``n_fft`` (400 = 25 ms) samples and hop
      ``hop_length`` (160 = 10 ms) on a 16 kHz waveform; power spectrum ``|X|^2``.
    * Slaney mel filterbank with ``n_mels`` (80) bins from ``f_min`` to ``f_max`` (default 8 kHz),
      computed by :func:`mel_filterbank` (no librosa).
    * ``log(clamp(mel, 1e-5))`` (natural log), then the fixed affine normalisation
      ``(x + 4) / 4``: silence maps to about -1.9 and loud speech to about +2, no data statistics.
    * Framing: video frame ``i`` covers samples ``[i * sr / fps, (i + 1) * sr / fps)``. The
      waveform is zero-padded (or trimmed) to exactly ``ceil(S * sr / fps)`` samples, so the last
      frame is complete and trailing audio beyond ``S`` frames is ignored. Mel frame ``j``
      is centred on the middle of hop ``j`` (samples ``[j * hop, (j + 1) * hop)``): the signal is
      zero-padded by ``(n_fft - hop) / 2`` on both sides, so the mel frames tile the audio.
    * Grouping: ``k`` mel steps per video frame, fixed (default 4, the natural count at 25 fps with
      a 10 ms hop) so that the feature width does not depend on the frame rate.
      The mel sequence is linearly resampled in time to ``S * k`` steps, step ``m`` centred at
      ``(m + 0.5) * sr / (fps * k)`` samples (for 25 fps this is the identity), and reshaped to
      ``(S, 1, k * n_mels)``, time-major: ``[mel_0 (n_mels), mel_1, ..., mel_{k-1}]``.

    Attributes: ``layers`` (1), ``dim`` (``k * n_mels``), ``frames_per_video_frame`` (``k``).
    The module has no parameters; its window and filterbank are non-persistent buffers.
    """

    def __init__(
        self,
        fps: float = 25.0,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        steps_per_frame: int = 4,
    ) -> None:
        super().__init__()
        if not (fps > 0 and math.isfinite(fps)):
            raise InputError(f"fps must be a positive number, got {fps!r}")
        if hop_length < 1 or n_fft < hop_length:
            raise ValueError(f"need 1 <= hop_length <= n_fft, got hop {hop_length}, n_fft {n_fft}")
        self.fps = float(fps)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.samples_per_frame = self.sample_rate / self.fps
        if steps_per_frame < 1:
            raise ValueError(f"steps_per_frame must be >= 1, got {steps_per_frame}")
        self.frames_per_video_frame = int(steps_per_frame)
        self.layers = 1
        self.dim = self.frames_per_video_frame * self.n_mels
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)
        self.register_buffer("mel_fb", torch.from_numpy(fb), persistent=False)

    @property
    def lookahead_samples(self) -> int:
        """Samples past the end of video frame ``i`` that its features read: the last mel step of
        the frame interpolates up to one mel frame past its centre (``hop / 2`` further), and a mel
        frame's window reaches ``n_fft - (n_fft - hop) // 2`` samples past its hop's start, plus one
        for the rounding of the segment's start (:meth:`AudioConditioner.clip
        <talkfast.pipeline.conditioning.AudioConditioner.clip>`): 361 samples (23 ms) for the
        defaults, less than one video frame at 25 fps. An upper bound: at 25 fps a frame's last mel
        step falls on a mel frame, which reads 120 samples past the frame's end."""
        return self.hop_length // 2 + self.n_fft - (self.n_fft - self.hop_length) // 2 + 1

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(M, n_mels)`` normalised log-mel frames, frame ``j`` centred at ``(j + 0.5) * hop``; ``M = ceil(N / hop)``."""
        n = waveform.shape[-1]
        frames = max(1, math.ceil(n / self.hop_length))
        left = (self.n_fft - self.hop_length) // 2
        right = (frames - 1) * self.hop_length + self.n_fft - left - n
        x = F.pad(waveform, (left, max(0, right)))
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window.to(x.device),
            center=False,
            return_complex=True,
        )[:, :frames]  # (n_freqs, M)
        power = spec.real.square() + spec.imag.square()
        mel = self.mel_fb.to(x.device).T @ power  # (n_mels, M)
        return ((torch.log(mel.clamp_min(1e-5)) + 4.0) / 4.0).T.contiguous()

    @torch.no_grad()
    def forward(self, waveform, num_frames: int) -> torch.Tensor:
        s = _check_frames(num_frames)
        wave = _as_waveform(waveform).to(self.window.device)
        wave = _fit_length(wave, math.ceil(s * self.samples_per_frame - 1e-6))
        mel = self.log_mel(wave)  # (M, n_mels)
        k = self.frames_per_video_frame
        steps = s * k
        m = mel.shape[0]
        # Fractional mel-frame index of the centre of each output step.
        centres = (torch.arange(steps, dtype=torch.float64, device=mel.device) + 0.5) * (
            self.samples_per_frame / k / self.hop_length
        ) - 0.5
        pos = centres.clamp(0.0, m - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp_max(m - 1)
        frac = (pos - lo.to(torch.float64)).to(mel.dtype)[:, None]
        resampled = mel[lo] * (1.0 - frac) + mel[hi] * frac  # (S*k, n_mels)
        return resampled.reshape(s, 1, k * self.n_mels).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# wav2vec2 features (Hallo)
# ----------------------------------------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _check_wav2vec2_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise CheckpointError(f"wav2vec2 model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise CheckpointError(f"wav2vec2 model path {model_dir} is not a directory")
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json")
    if not any((model_dir / name).is_file() for name in _WEIGHT_FILES):
        missing.append("model weights (one of " + ", ".join(_WEIGHT_FILES) + ")")
    if missing:
        raise CheckpointError(f"wav2vec2 model directory {model_dir} is incomplete; missing: " + "; ".join(missing))


def load_wav2vec2(model_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, feature_extractor or None)`` from a local wav2vec2 folder (checked first; never
    downloads): the frozen ``Wav2Vec2Model`` in eval mode on ``device``/``dtype``, and the
    ``Wav2Vec2FeatureExtractor`` when ``preprocessor_config.json`` is there. A folder that does not
    load is a :class:`CheckpointError` naming it."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    _check_wav2vec2_dir(model_dir)
    try:
        model = Wav2Vec2Model.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"could not load a Wav2Vec2Model from {model_dir}: {exc}") from exc
    extractor = None
    if (model_dir / "preprocessor_config.json").is_file():
        try:
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"could not load the feature extractor config in {model_dir}: {exc}") from exc
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval(), extractor


def conv_geometry(config) -> tuple[int, int]:
    """``(receptive_field, total_stride)`` in samples of a wav2vec2 config's CNN: the shortest input
    that yields one CNN frame and the hop between frames (400 and 320 for wav2vec2-base)."""
    rf, jump = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


class Wav2Vec2Features(torch.nn.Module):
    """Hallo's audio features: every transformer layer of wav2vec2, one vector per video frame.

    ``model_dir`` is a local ``save_pretrained`` folder (e.g. wav2vec2-base-960h); nothing is
    downloaded. ``Wav2Vec2FeatureExtractor`` is loaded when ``preprocessor_config.json`` exists,
    otherwise the waveform gets plain zero-mean unit-variance normalisation
    ``(x - mean) / sqrt(var + 1e-7)`` (what that extractor does for wav2vec2-base).

    ``forward(waveform, S)`` follows Hallo's patched ``Wav2Vec2Model.forward``:

    1. normalise the whole waveform; zero-pad (after normalisation) or trim it to
       ``ceil(S * sr / fps)`` samples if it covers more or fewer than ``S`` frames (for the usual
       ``S = ceil(seconds * fps)`` it is left alone);
    2. if ``clip_length > 0`` and ``S`` is not a multiple of it, append
       ``(S' - S) * round(sr / fps)`` zero samples and use ``S'`` = ``S`` rounded up to a multiple
       of ``clip_length``, exactly as Hallo's audio processor (``clip_length=16``) does;
    3. CNN ``model.feature_extractor`` -> ``(1, C, T)`` at 50 Hz, linearly interpolated to ``S'``
       steps with ``align_corners=True``;
    4. ``feature_projection`` and the encoder (via ``Wav2Vec2Model.forward`` with the CNN output
       substituted by a forward hook, so the installed transformers' own code path, including its
       ``hidden_states`` bookkeeping, is used); keep ``hidden_states[1:]``, one per layer;
    5. return the first ``S`` frames: ``(S, num_hidden_layers, hidden_size)`` float32.

    The model is kept in eval mode (no SpecAugment masking, no dropout, no LayerDrop) even if a
    parent module calls ``.train()``, and its parameters are frozen.
    Attributes: ``layers`` (number of transformer layers) and ``dim`` (hidden size).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        fps: float = 25.0,
        clip_length: int = 16,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__()
        model_dir = Path(model_dir).expanduser()
        if not (fps > 0 and math.isfinite(fps)):
            raise InputError(f"fps must be a positive number, got {fps!r}")
        if clip_length < 0:
            raise InputError(f"clip_length must be >= 0, got {clip_length}")
        self.model, self.feature_extractor = load_wav2vec2(model_dir, device, dtype)
        self.dtype = dtype
        self.fps = float(fps)
        self.clip_length = int(clip_length)
        self.sample_rate = int(sample_rate)
        self.layers = int(self.model.config.num_hidden_layers)
        self.dim = int(self.model.config.hidden_size)
        self.receptive_field = conv_geometry(self.model.config)[0]  # shortest input that yields one CNN frame

    def train(self, mode: bool = True) -> "Wav2Vec2Features":
        super().train(mode)
        self.model.eval()  # never SpecAugment / dropout / LayerDrop
        return self

    def _normalise(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.numel() == 0:
            return wave
        if self.feature_extractor is not None:
            values = self.feature_extractor(
                wave.numpy(), sampling_rate=self.sample_rate, return_tensors="np"
            ).input_values
            return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(-1))
        w64 = wave.to(torch.float64)
        return ((w64 - w64.mean()) / torch.sqrt(w64.var(unbiased=False) + 1e-7)).to(torch.float32)

    @torch.no_grad()
    def forward(self, waveform, num_frames: int) -> torch.Tensor:
        s = _check_frames(num_frames)
        wave = self._normalise(_as_waveform(waveform))
        spf = self.sample_rate / self.fps
        if math.ceil(wave.shape[-1] / spf - 1e-9) != s:
            wave = _fit_length(wave, math.ceil(s * spf - 1e-6))
        s_pad = s
        if self.clip_length > 0 and s % self.clip_length:
            s_pad = s + self.clip_length - s % self.clip_length
            wave = F.pad(wave, (0, (s_pad - s) * int(round(spf))))
        if wave.shape[-1] < self.receptive_field:
            wave = F.pad(wave, (0, self.receptive_field - wave.shape[-1]))

        device = next(self.model.parameters()).device
        input_values = wave[None].to(device=device, dtype=self.dtype)

        def to_video_rate(_module, _inputs, output):
            # (1, C, T50) -> (1, C, S'), as in Hallo's patched forward
            return F.interpolate(output, size=s_pad, mode="linear", align_corners=True)

        handle = self.model.feature_extractor.register_forward_hook(to_video_rate)
        try:
            out = self.model(input_values, output_hidden_states=True, return_dict=True)
        finally:
            handle.remove()
        hidden = out.hidden_states
        if hidden is None or len(hidden) != self.layers + 1:
            raise RuntimeError(
                f"expected {self.layers + 1} hidden states from wav2vec2, got {None if hidden is None else len(hidden)}"
            )
        feats = torch.stack(hidden[1:], dim=2)[0]  # (S', layers, dim)
        return feats[:s].to(torch.float32)


# ----------------------------------------------------------------------------------------------


def window_features(feats: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Stack each frame with its neighbours: ``(S, L, D) -> (S, 2 * radius + 1, L, D)``.

    Row ``i`` holds frames ``i - radius .. i + radius`` with indices clamped to ``[0, S - 1]``
    (Hallo uses radius 2, giving 5 x 12 = 60 vectors per frame before its audio projection).
    Works for any trailing shape: ``(S, *rest) -> (S, 2 * radius + 1, *rest)``.
    """
    if not isinstance(feats, torch.Tensor) or feats.ndim < 1:
        raise InputError("window_features expects a tensor of shape (S, L, D)")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    s = feats.shape[0]
    if s == 0:
        return feats.new_zeros((0, 2 * radius + 1, *feats.shape[1:]))
    offsets = torch.arange(-radius, radius + 1, device=feats.device)
    idx = (torch.arange(s, device=feats.device)[:, None] + offsets[None, :]).clamp(0, s - 1)
    return feats[idx]


def build_audio_features(kind: str, model_dir: str | Path | None = None, **kwargs) -> torch.nn.Module:
    """``"mel"`` -> :class:`MelFeatures` (``kwargs`` e.g. ``fps``); ``"wav2vec2"`` ->
    :class:`Wav2Vec2Features` loaded from ``model_dir`` (``kwargs``: ``device``, ``dtype``, ``fps``,
    ``clip_length``)."""
    name = str(kind).strip().lower().replace("-", "").replace("_", "")
    if name in ("mel", "logmel"):
        if model_dir is not None:
            raise InputError("mel audio features take no model directory")
        return MelFeatures(**kwargs)
    if name in ("wav2vec2", "wav2vec"):
        if model_dir is None:
            raise CheckpointError("wav2vec2 audio features need a model directory (e.g. wav2vec2-base-960h)")
        return Wav2Vec2Features(model_dir, **kwargs)
    raise InputError(f"unknown audio feature kind {kind!r}; choose 'mel' or 'wav2vec2'")
