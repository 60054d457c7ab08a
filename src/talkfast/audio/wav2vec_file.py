"""wav2vec2 features of a whole audio file, prepared as Hallo's and MEMO's audio processors do.

Matched against (read, not copied):

* Hallo 8fd7c57 ``hallo/datasets/audio_processor.py`` (``AudioProcessor.preprocess``),
  ``hallo/models/wav2vec.py`` (``Wav2VecModel.forward``, ``linear_interpolation``) and
  ``scripts/inference.py`` (``process_audio_emb``: the +/-2 frame context, clamped at the last
  *padded* frame; clips ``range(S' // 16)``; the video cut to the unpadded ``S``);
* MEMO a5aee30 ``memo/utils/audio_utils.py`` (``preprocess_audio``: the same steps, the context
  stacked there, and the padded ``S'`` returned) and ``memo/models/wav2vec.py`` (same forward).

Their steps, reproduced by :class:`Wav2Vec2FileFeatures`:

1. ``x`` = the whole 16 kHz (vocals) waveform, float32, normalised by ``Wav2Vec2FeatureExtractor``:
   ``(x - x.mean()) / np.sqrt(x.var() + 1e-7)`` in numpy float32 (we evaluate that same numpy
   expression; ``do_normalize`` is read from ``preprocessor_config.json`` when there is one);
2. ``S = math.ceil(n / 16000 * fps)`` in floating point (this can be one more than the exact
   ``ceil(n * fps / 16000)`` of :meth:`talkfast.io.audio.Audio.num_frames`, e.g. n = 4480 at 25 fps);
   if ``S % 16``: ``(16 - S % 16) * (16000 // fps)`` zero samples are appended *after*
   normalisation (Hallo 640 per frame at 25 fps, MEMO 533 at 30 fps) and ``S' = S`` rounded up to
   a multiple of 16;
3. the CNN ``feature_extractor`` over the whole padded file -> ``(1, 512, T)`` at ~50 Hz, linearly
   interpolated to ``S'`` steps with ``align_corners=True`` (so the grid depends on the file length);
4. ``feature_projection`` and the encoder; ``hidden_states[1:]`` -> ``(S', 12, 768)``;
5. frame ``i`` of a clip reads frames ``i-2 .. i+2`` clamped to ``[0, S'-1]``: the last clip reads
   padded features. Hallo returns ``S`` (the video is cut to it), MEMO ``S'``.

Whole file vs windows. The encoder runs on the ``S'`` video-rate tokens (25 or 30 per second, the
CNN's 50 Hz output is interpolated down before it), so its attention is quadratic in ``S'``; at these
lengths the CNN's activations, linear in the samples, dominate the memory. Up to
``max_whole_frames`` padded frames (default :data:`MAX_WHOLE_FRAMES` = 4800: 192 s at 25 fps, 160 s
at 30 fps) the whole file goes through the model's own forward, as the originals do. Measured with
wav2vec2-base's config (random weights), fp32, CPU, 2 threads, transformers 5.25 (SDPA attention):
peak RSS 1.1 GB at 40 s, 1.7 GB at 80 s, 3.5 GB at the bound (192 s; 0.55 GB before the call), 95 s
of compute there; the cached result is ``S' x 12 x 768`` float32 = 36.9 KB a frame (177 MB at the
bound). Longer files are windowed, keeping everything that is global in the originals:

* the normalisation statistics of the whole file (each slice normalised with them: element-wise
  identical to normalising the whole file);
* the GroupNorm of the first conv layer (wav2vec2-base's ``feat_extract_norm="group"`` normalises
  each channel over the whole time axis): its per-channel statistics are accumulated over the whole
  padded file in a first chunked pass (float64), then applied to each window;
* the interpolation grid: output frame ``j`` reads CNN frame position ``j * (T - 1) / (S' - 1)`` of
  the whole file; each window computes only the CNN frames its grid points need (the conv stack is
  local: frame ``t`` sees samples ``[320 t, 320 t + 400)``);
* the encoder then runs on ``window_frames`` tokens, of which the centre ``window_frames -
  2 * overlap_frames`` are kept (the first and last windows keep their outer edge too).

Windows are computed lazily, when a clip needs them, and the last ``cache_windows`` (3) cores are
kept, so memory is bounded by one window's computation plus three cores (3 x 1600 frames x 36.9 KB
= 177 MB) whatever the file length, plus the caller's waveform (not copied) and a 64 MiB chunk of
the first conv's output in the statistics pass. Measured (same setting as above): a 240 s file read
clip by clip, 3.0 GB peak RSS (0.5 GB before), 64 s; a window's CNN over 96 s of audio dominates. The windowed features are not the originals'
(the encoder's attention sees only its window); their distance from the whole-file features is
measured and stated in ``tests/test_wav2vec_file.py`` and in the constants' comment below.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkfast.audio.features import SAMPLE_RATE, _as_waveform, conv_geometry, load_wav2vec2
from talkfast.errors import CheckpointError, InputError

__all__ = [
    "FileFraming",
    "FAMILIES",
    "MAX_WHOLE_FRAMES",
    "WINDOW_FRAMES",
    "OVERLAP_FRAMES",
    "file_frame_counts",
    "FileFeatures",
    "Wav2Vec2FileFeatures",
]

MAX_WHOLE_FRAMES = 4800
# Windows of 2400 tokens (96 s at 25 fps) keeping the centre 1600. Distance from the whole-file
# features, per frame and layer, |w - f| / |f|, wav2vec2-base config with RANDOM weights (so only
# indicative: random attention is diffuse, a trained model's is more local), fp32 CPU, a synthetic
# speech-like 240 s signal at 25 fps (S' = 6000): mean 1.24%, p99 2.13%, max 2.31% (worst layer's
# mean 1.85%). Smaller windows were further off: 1500/200 mean 1.67%, max 4.02%; on a 120 s file
# 1200/300 mean 1.91%, max 5.71%; 750/150 mean 2.63%, max 4.88%.
WINDOW_FRAMES = 2400
OVERLAP_FRAMES = 400


@dataclass(frozen=True)
class FileFraming:
    """How a family frames the whole-file features.

    ``fps``: its video rate; ``clip_length``: frames per clip (the padding multiple);
    ``returns_padded``: whether its frame count is the padded ``S'`` (MEMO) or ``S`` (Hallo).
    """

    name: str
    fps: float
    clip_length: int = 16
    returns_padded: bool = False


FAMILIES = {
    "hallo": FileFraming("hallo", 25.0, 16, False),
    "memo": FileFraming("memo", 30.0, 16, True),
}


def file_frame_counts(n_samples: int, fps: float, clip_length: int = 16,
                      sample_rate: int = SAMPLE_RATE) -> tuple[int, int, int]:
    """``(S, S', pad_samples)`` for a file of ``n_samples`` samples, as the originals compute them:
    ``S = ceil(n / sr * fps)`` (floating point, in that order), ``S'`` = ``S`` rounded up to a
    multiple of ``clip_length`` (none if ``clip_length <= 0``), ``pad_samples = (S' - S) * (sr // fps)``."""
    if n_samples < 1:
        raise InputError("the audio is empty: wav2vec2 features need at least one sample")
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    s = math.ceil(n_samples / sample_rate * fps)
    extra = clip_length - s % clip_length if clip_length > 0 and s % clip_length else 0
    return s, s + extra, extra * int(sample_rate // fps)


class FileFeatures:
    """The ``(S', L, D)`` features of one file, whole or computed window by window on demand.

    ``frames`` = ``S``, ``padded_frames`` = ``S'``. :meth:`rows` gives frames ``[lo, hi)``;
    :meth:`window` a clip with its +/-``radius`` context clamped to ``[0, S' - 1]``.
    """

    def __init__(self, frames: int, padded_frames: int, whole: torch.Tensor | None = None,
                 source: "_WindowedSource | None" = None, cache_windows: int = 3) -> None:
        self.frames, self.padded_frames = int(frames), int(padded_frames)
        self._whole, self._source = whole, source
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_windows = max(1, int(cache_windows))

    @property
    def windowed(self) -> bool:
        return self._whole is None

    def _core(self, k: int) -> torch.Tensor:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        core = self._source.core(k)
        self._cache[k] = core
        while len(self._cache) > self._cache_windows:
            self._cache.popitem(last=False)
        return core

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Frames ``[lo, hi)`` of the padded ``S'``, ``(hi - lo, L, D)`` float32."""
        if not 0 <= lo <= hi <= self.padded_frames:
            raise IndexError(f"rows [{lo}, {hi}) outside [0, {self.padded_frames})")
        if self._whole is not None:
            return self._whole[lo:hi]
        src = self._source
        if hi == lo:
            return torch.zeros(0, src.layers, src.dim)
        parts = []
        for k in range(lo // src.core_len, (hi - 1) // src.core_len + 1):
            c0 = k * src.core_len
            core = self._core(k)
            parts.append(core[max(lo, c0) - c0 : min(hi, c0 + core.shape[0]) - c0])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def full(self) -> torch.Tensor:
        """All ``S'`` frames (for a windowed file this computes every window)."""
        return self.rows(0, self.padded_frames)

    def window(self, start: int, frames: int, radius: int = 2) -> torch.Tensor:
        """``(frames, 2 * radius + 1, L, D)``: row ``i`` holds frames ``start + i + (-radius..radius)``,
        each clamped to ``[0, S' - 1]`` (as Hallo's ``process_audio_emb`` and MEMO's
        ``preprocess_audio``; frames requested past ``S' - 1`` repeat the last padded frame)."""
        if frames < 1 or start < 0:
            raise InputError(f"need start >= 0 and frames >= 1, got start={start}, frames={frames}")
        last = self.padded_frames - 1
        lo = min(max(0, start - radius), last)
        hi = min(last, start + frames - 1 + radius) + 1
        block = self.rows(lo, hi)
        idx = torch.arange(start, start + frames)[:, None] + torch.arange(-radius, radius + 1)[None, :]
        return block[idx.clamp(0, last) - lo]


class _WindowedSource:
    """Computes core ``k`` of a long file: frames ``[k * core_len, (k + 1) * core_len)``."""

    def __init__(self, owner: "Wav2Vec2FileFeatures", wave: np.ndarray, mean, scale, n_padded: int,
                 padded_frames: int, window_frames: int, overlap_frames: int) -> None:
        self.owner, self.wave, self.mean, self.scale = owner, wave, mean, scale
        self.n_padded, self.s_pad = n_padded, padded_frames
        self.overlap = overlap_frames
        self.core_len = window_frames - 2 * overlap_frames
        self.layers, self.dim = owner.layers, owner.dim
        self.cnn_frames = owner.cnn_length(n_padded)
        self.gn_stats = owner._group_norm_stats(self) if owner.group_norm_first else None

    def samples(self, a: int, b: int) -> torch.Tensor:
        """Normalised padded waveform samples ``[a, b)`` (zeros past the file, as the padding)."""
        n = self.wave.shape[0]
        part = self.wave[min(a, n) : min(b, n)]
        if self.mean is not None:
            part = (part - self.mean) / self.scale  # the extractor's expression, element-wise
        out = torch.zeros(b - a, dtype=torch.float32)
        out[: part.shape[0]] = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
        return out

    def positions(self, j0: int, j1: int) -> torch.Tensor:
        """CNN-frame positions of output frames ``[j0, j1)`` on the whole file's grid, in float32
        as ``F.interpolate(..., align_corners=True)`` computes them (``scale * j``)."""
        j = torch.arange(j0, j1, dtype=torch.float32)
        if self.s_pad == 1:
            return torch.zeros_like(j)
        scale = torch.tensor(float(self.cnn_frames - 1), dtype=torch.float32) / float(self.s_pad - 1)
        return j * scale

    def core(self, k: int) -> torch.Tensor:
        c0 = k * self.core_len
        c1 = min(self.s_pad, c0 + self.core_len)
        e0, e1 = max(0, c0 - self.overlap), min(self.s_pad, c1 + self.overlap)
        pos = self.positions(e0, e1)
        t0 = int(pos[0].floor())
        t1 = min(self.cnn_frames - 1, int(pos[-1].floor()) + 1)
        o = self.owner
        wave = self.samples(t0 * o.total_stride, t1 * o.total_stride + o.receptive_field)
        cnn = o._cnn(wave, self.gn_stats)[:, : t1 - t0 + 1]  # (C, t1 - t0 + 1)
        base = pos.floor()
        lam = (pos - base).to(torch.float32)
        i0 = base.long() - t0
        i1 = (i0 + 1).clamp_max(t1 - t0)
        grid = cnn[:, i0] * (1.0 - lam) + cnn[:, i1] * lam  # (C, e1 - e0)
        feats = o._encode(grid[None])  # (e1 - e0, L, D)
        return feats[c0 - e0 : c1 - e0].contiguous()


class Wav2Vec2FileFeatures(torch.nn.Module):
    """Whole-file wav2vec2 features as Hallo's / MEMO's audio processors compute them.

    ``model_dir``: a local ``save_pretrained`` folder (wav2vec2-base-960h); nothing is downloaded,
    a missing or incomplete folder raises :class:`~talkfast.errors.CheckpointError`.
    ``max_whole_frames``: files with at most this many padded frames ``S'`` go through the model in
    one piece (exactly the originals); longer ones in windows of ``window_frames`` tokens whose
    ``overlap_frames`` on each side are dropped (see the module docstring).

    ``prepare(waveform, fps, clip_length=16) -> FileFeatures``.
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *, max_whole_frames: int = MAX_WHOLE_FRAMES,
                 window_frames: int = WINDOW_FRAMES, overlap_frames: int = OVERLAP_FRAMES,
                 sample_rate: int = SAMPLE_RATE, cache_windows: int = 3) -> None:
        super().__init__()
        if model_dir is None:
            raise CheckpointError("whole-file wav2vec2 features need a model directory (e.g. wav2vec2-base-960h)")
        model_dir = Path(model_dir).expanduser()
        if not (window_frames > 2 * overlap_frames >= 0):
            raise ValueError(f"need window_frames > 2 * overlap_frames >= 0, got {window_frames}, {overlap_frames}")
        self.model, fe = load_wav2vec2(model_dir, device, dtype)
        self.normalize = True if fe is None else bool(fe.do_normalize)
        self.dtype = dtype
        self.sample_rate = int(sample_rate)
        self.max_whole_frames = int(max_whole_frames)
        self.window_frames, self.overlap_frames = int(window_frames), int(overlap_frames)
        self.cache_windows = int(cache_windows)
        cfg = self.model.config
        self.layers, self.dim = int(cfg.num_hidden_layers), int(cfg.hidden_size)
        self.kernels, self.strides = list(cfg.conv_kernel), list(cfg.conv_stride)
        self.receptive_field, self.total_stride = conv_geometry(cfg)  # 400 and 320 for wav2vec2-base
        self.group_norm_first = cfg.feat_extract_norm == "group"

    def train(self, mode: bool = True) -> "Wav2Vec2FileFeatures":
        super().train(mode)
        self.model.eval()
        return self

    def cnn_length(self, n: int) -> int:
        """CNN output frames for ``n`` input samples."""
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return n

    # --------------------------------------------------------------------------------- pieces

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run(self, input_values: torch.Tensor, replace_cnn) -> torch.Tensor:
        """The model's own forward with the CNN output replaced by ``replace_cnn(cnn_output)``;
        ``hidden_states[1:]`` stacked to ``(S', L, D)`` float32 on the CPU."""
        handle = self.model.feature_extractor.register_forward_hook(lambda _m, _i, out: replace_cnn(out))
        try:
            out = self.model(input_values.to(self._device(), self.dtype), output_hidden_states=True, return_dict=True)
        finally:
            handle.remove()
        hidden = out.hidden_states
        if hidden is None or len(hidden) != self.layers + 1:
            raise RuntimeError(f"expected {self.layers + 1} hidden states from wav2vec2, got "
                               f"{None if hidden is None else len(hidden)}")
        return torch.stack(hidden[1:], dim=2)[0].to("cpu", torch.float32)

    def _encode(self, grid: torch.Tensor) -> torch.Tensor:
        """Encoder over given CNN features ``(1, C, W)`` (a dummy one-frame input feeds the CNN)."""
        dummy = torch.zeros(1, self.receptive_field)
        grid = grid.to(self._device(), self.dtype)
        return self._run(dummy, lambda _out: grid)

    def _first_conv(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model.feature_extractor.conv_layers[0].conv(wave.to(self._device(), self.dtype)[None, None])[0]

    def _group_norm_stats(self, src: _WindowedSource):
        """Per-channel mean and variance of the first conv's output over the whole padded file."""
        k0, s0 = self.kernels[0], self.strides[0]
        total = (src.n_padded - k0) // s0 + 1
        step = 16384  # first-conv frames per chunk (512 x 16384 float64: 64 MiB)
        acc = acc2 = None
        for f0 in range(0, total, step):
            f1 = min(total, f0 + step)
            y = self._first_conv(src.samples(f0 * s0, (f1 - 1) * s0 + k0)).double()
            acc = y.sum(1) if acc is None else acc + y.sum(1)
            acc2 = y.square().sum(1) if acc2 is None else acc2 + y.square().sum(1)
        mean = acc / total
        var = (acc2 / total - mean.square()).clamp_min(0.0)
        return mean, var

    def _cnn(self, wave: torch.Tensor, gn_stats) -> torch.Tensor:
        """The conv stack on a waveform slice ``(n,)`` -> ``(C, frames)``; the first layer's
        GroupNorm (if any) uses the whole file's statistics ``gn_stats``."""
        layers = self.model.feature_extractor.conv_layers
        if gn_stats is None:
            h = wave.to(self._device(), self.dtype)[None, None]
            for layer in layers:
                h = layer(h)
            return h[0].to(torch.float32)
        first = layers[0]
        y = self._first_conv(wave)
        gn = first.layer_norm
        mean, var = (t.to(y.device) for t in gn_stats)
        inv = torch.rsqrt(var + gn.eps)
        w = gn.weight.double() * inv
        b = (gn.bias.double() - mean * w).to(y.dtype)
        h = first.activation(torch.addcmul(b[:, None], y, w.to(y.dtype)[:, None]))[None]  # no float64 copy
        del y
        for layer in layers[1:]:
            h = layer(h)
        return h[0].to(torch.float32)

    # ---------------------------------------------------------------------------------- public

    def normalise(self, wave: np.ndarray):
        """``(mean, scale)`` of ``Wav2Vec2FeatureExtractor``'s normalisation (numpy float32
        scalars), or ``(None, None)`` if its config says ``do_normalize=False``."""
        if not self.normalize:
            return None, None
        return wave.mean(), np.sqrt(wave.var() + 1e-7)

    @torch.no_grad()
    def prepare(self, waveform, fps: float, clip_length: int = 16, *, windowed: bool | None = None) -> FileFeatures:
        """Features of the whole file at ``fps``. ``windowed``: force (True) or forbid (False) the
        windowed path; ``None`` picks it when ``S' > max_whole_frames``."""
        wave = waveform if isinstance(waveform, np.ndarray) and waveform.dtype == np.float32 and waveform.ndim == 1 \
            else _as_waveform(waveform).numpy()
        if not np.isfinite(wave).all():
            raise InputError("the waveform contains NaN or infinite values")
        s, s_pad, pad = file_frame_counts(wave.shape[0], fps, clip_length, self.sample_rate)
        mean, scale = self.normalise(wave)
        n_padded = max(wave.shape[0] + pad, self.receptive_field)  # under 400 samples the originals fail
        if windowed is None:
            windowed = s_pad > self.max_whole_frames
        if windowed:
            src = _WindowedSource(self, wave, mean, scale, n_padded, s_pad, self.window_frames, self.overlap_frames)
            return FileFeatures(s, s_pad, source=src, cache_windows=self.cache_windows)
        x = wave if mean is None else (wave - mean) / scale
        values = torch.zeros(1, n_padded, dtype=torch.float32)
        values[0, : x.shape[0]] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        feats = self._run(values, lambda out: F.interpolate(out, size=s_pad, mode="linear", align_corners=True))
        return FileFeatures(s, s_pad, whole=feats)


def framing_for(family: str) -> FileFraming:
    """:data:`FAMILIES` entry for ``"hallo"`` or ``"memo"``."""
    key = str(family).strip().lower()
    if key not in FAMILIES:
        raise InputError(f"unknown whole-file wav2vec2 family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[key]


class FeatureCache:
    """One :class:`FileFeatures` per (audio object, fps), the last ``size`` kept; entries are keyed
    by the object's identity and dropped when it is garbage-collected."""

    def __init__(self, size: int = 1) -> None:
        self.size = max(1, int(size))
        self._entries: OrderedDict[tuple[int, float], tuple[weakref.ref, FileFeatures]] = OrderedDict()

    def get(self, owner, fps: float, compute) -> FileFeatures:
        key = (id(owner), float(fps))
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is owner:
            self._entries.move_to_end(key)
            return hit[1]
        feats = compute()
        self._entries[key] = (weakref.ref(owner), feats)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return feats
