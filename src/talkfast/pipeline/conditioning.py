"""Turning the user's portrait and speech into model conditioning.

- :class:`Portrait`: the square-cropped source image, its face regions, masks, FaceLocator input
  and identity embedding.
- :class:`AudioConditioner`: per-clip windowed audio features, computed from a waveform segment
  around the clip (so memory is bounded by a clip, never by the audio length); or, with the
  ``"wav2vec2_file"`` kind, sliced from Hallo's / MEMO's whole-file wav2vec2 features.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from ..audio.features import MelFeatures, Wav2Vec2Features, window_features
from ..audio.wav2vec_file import FeatureCache, FileFeatures, Wav2Vec2FileFeatures, framing_for
from ..face.detect import Box, FaceRegions, detect_face
from ..face.masks import MaskSet, build_masks, face_locator_image
from ..io.audio import Audio
from ..io.image import square_crop, square_crop_box, to_tensor

log = logging.getLogger(__name__)


@dataclass
class Portrait:
    image: Image.Image  # size x size RGB
    pixels: torch.Tensor  # (3, size, size) in [-1, 1]
    regions: FaceRegions
    masks: MaskSet
    locator_input: torch.Tensor  # (3, size, size) in {0, 1}
    identity: torch.Tensor  # (embed_dim,)
    prep: dict = field(default_factory=dict)  # which preparation ran per step (the sidecar's "preparation")


def identity_embedding(image: Image.Image, regions: FaceRegions, dim: int, kind: str) -> torch.Tensor:
    """The face-identity vector fed to ImageProj.

    ``"pixels"`` (talkfast's own models): the face crop averaged down to a 4x4 RGB grid, in [-1, 1],
    zero-padded to ``dim``. ``"zeros"`` (Hallo without a user-supplied insightface embedding):
    all zeros, which is what Hallo itself uses when its detector finds no face.
    """
    if kind == "zeros":
        return torch.zeros(dim)
    if kind != "pixels":
        raise ValueError(f"unknown identity embedding {kind!r}")
    crop = image.crop(regions.face.to_int()).resize((4, 4), Image.Resampling.BOX)
    v = torch.from_numpy(np.asarray(crop, dtype=np.float32).reshape(-1) / 127.5 - 1.0)
    out = torch.zeros(dim)
    out[: min(dim, v.numel())] = v[:dim]
    return out


def prepare_portrait(image: Image.Image, size: int, latent_size: int, levels: int, embed_dim: int,
                     identity: str = "pixels", name: str = "portrait", regions: FaceRegions | None = None) -> Portrait:
    """Crop the largest square around the face, resize to ``size`` and build masks at the
    latent resolutions ``latent_size / 2**i`` (Hallo: 64, 32, 16, 8). ``regions`` (known face
    and lip boxes of a square image, e.g. from the synthetic corpus) replaces detection."""
    if regions is not None:
        if image.size[0] != image.size[1]:
            raise ValueError("known face regions need a square image")
        square = image if image.size[0] == size else image.resize((size, size), Image.Resampling.LANCZOS)
        return _portrait(square, regions.rescaled((size, size)), latent_size, levels, embed_dim, identity)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = detect_face(image)
    for w in caught:
        log.warning("%s: %s", name, w.message)
    box = first.face.to_int() if first.detected else None
    square = square_crop(image, size, box=box)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regions = detect_face(square)
    if first.detected and not regions.detected:
        # The crop lost the detection (a small face once resized); map the first detection into it.
        regions = _into_square_crop(first, size)
    return _portrait(square, regions, latent_size, levels, embed_dim, identity)


def _into_square_crop(regions: FaceRegions, size: int) -> FaceRegions:
    """``regions`` of a whole image mapped into the square that :func:`square_crop` takes around
    its face box, resized to ``size`` x ``size``."""
    x0, y0, x1, y1 = regions.face.to_int()
    left, top, side = square_crop_box(*regions.image_size, ((x0 + x1) / 2.0, (y0 + y1) / 2.0))

    def move(b: Box) -> Box:
        return Box(b.x0 - left, b.y0 - top, b.x1 - left, b.y1 - top).clip(side, side).scale(size / side)

    return replace(regions, face=move(regions.face), lip=move(regions.lip), image_size=(size, size))


def _portrait(square: Image.Image, regions: FaceRegions, latent_size: int, levels: int, embed_dim: int,
              identity: str) -> Portrait:
    size = square.size[0]
    sizes = [max(1, latent_size // 2**i) for i in range(levels)]
    masks = build_masks(regions, level_sizes=sizes, base=latent_size)
    return Portrait(
        image=square,
        pixels=to_tensor(square),
        regions=regions,
        masks=masks,
        locator_input=face_locator_image(regions, size),
        identity=identity_embedding(square, regions, embed_dim, identity),
    )


class AudioConditioner:
    """Windowed per-frame audio features for one clip at a time, at any video frame rate.

    Kinds: ``"mel"`` and ``"wav2vec2"`` (per clip, from the waveform around it) and
    ``"wav2vec2_file"``: Hallo's (``family="hallo"``) or MEMO's (``family="memo"``) features of the
    whole file (:mod:`talkfast.audio.wav2vec_file`), computed once per :class:`Audio` object and fps
    (the last one kept), each clip sliced from them with its +/-``radius`` context clamped at the
    last padded frame ``S' - 1``. Use :meth:`num_frames` for the frame count to generate / keep.
    """

    def __init__(self, kind: str = "mel", model_dir=None, fps: int = 25, radius: int = 2,
                 context_frames: int = 50, device="cpu", family: str = "hallo", **file_options):
        self.kind, self.fps, self.radius, self.context = kind, fps, radius, context_frames
        self._mel: dict[float, MelFeatures] = {}
        if kind == "wav2vec2":
            self.wav2vec = Wav2Vec2Features(model_dir, device=device)
        elif kind == "wav2vec2_file":
            self.framing = framing_for(family)
            self.wav2vec_file = Wav2Vec2FileFeatures(model_dir, device=device, **file_options)
            self._files = FeatureCache(size=1)
        elif kind != "mel":
            raise ValueError(f"unknown audio features {kind!r}")
        if file_options and kind != "wav2vec2_file":
            raise ValueError(f"options {sorted(file_options)} are for the 'wav2vec2_file' kind only")

    def file_features(self, audio: Audio, fps: float | None = None) -> FileFeatures:
        """The whole-file features of ``audio`` at ``fps`` (``"wav2vec2_file"`` only; cached)."""
        if self.kind != "wav2vec2_file":
            raise ValueError("file_features needs the 'wav2vec2_file' audio kind")
        if int(audio.sample_rate) != self.wav2vec_file.sample_rate:
            raise ValueError(f"wav2vec2 needs {self.wav2vec_file.sample_rate} Hz audio, got {audio.sample_rate} Hz")
        fps = float(fps or self.fps)
        return self._files.get(audio, fps, lambda: self.wav2vec_file.prepare(
            audio.samples, fps, self.framing.clip_length))

    def num_frames(self, audio: Audio, fps: float | None = None) -> int:
        """Video frames for ``audio`` at ``fps``: ``audio.num_frames(fps)`` for the per-clip kinds;
        for ``"wav2vec2_file"`` the originals' count: Hallo ``S = ceil(n / 16000 * fps)`` (the
        video is cut to it), MEMO the padded ``S'`` (a multiple of 16)."""
        fps = fps or self.fps
        if self.kind != "wav2vec2_file":
            return audio.num_frames(fps)
        feats = self.file_features(audio, fps)
        return feats.padded_frames if self.framing.returns_padded else feats.frames

    def padded_frames(self, audio: Audio, fps: float | None = None) -> int:
        """``S'``: ``S`` rounded up to a multiple of 16 (``"wav2vec2_file"``); the clips cover it."""
        return self.file_features(audio, fps).padded_frames

    def lookahead_frames(self, fps: float | None = None) -> int | None:
        """Video frames of audio past a clip's last frame that :meth:`clip` reads (its features
        depend on nothing later), or None where the features need the whole file
        (``"wav2vec2_file"``: Hallo's and MEMO's wav2vec2 runs over the whole recording and is
        normalised over it). ``"mel"``: the +/-``radius`` window plus what the log-mel of the
        window's last frame reads (:attr:`MelFeatures.lookahead_samples`, 361 samples): ``radius + 1``
        frames at 25 fps (120 ms), ``radius + 2`` at 60 fps. ``"wav2vec2"`` (per clip): the window plus the ``context_frames`` the
        transformer sees on each side (2.08 s at 25 fps). A live input (:mod:`talkfast.io.live`)
        starts clip k once the audio up to its end plus this many frames has arrived."""
        fps = fps or self.fps
        if self.kind == "wav2vec2_file":
            return None
        if self.kind == "mel":
            mel = self._mel_features(fps)
            return self.radius + math.ceil(mel.lookahead_samples * fps / mel.sample_rate)
        return self.radius + self.context

    def _mel_features(self, fps: float) -> MelFeatures:
        if fps not in self._mel:
            self._mel[fps] = MelFeatures(fps=fps)
        return self._mel[fps]

    def extractor(self, fps: float):
        if self.kind == "mel":
            return self._mel_features(fps)
        if self.kind == "wav2vec2_file":
            raise ValueError("the 'wav2vec2_file' kind has no per-clip extractor; use file_features()")
        self.wav2vec.fps = float(fps)  # used only to frame the waveform
        return self.wav2vec

    @torch.no_grad()
    def clip(self, audio: Audio, start: int, frames: int, fps: float | None = None) -> torch.Tensor:
        """Features (frames, 2r+1, L, D) for video frames [start, start + frames) at ``fps``;
        frame indices past the end of the audio repeat the last frame (they are trimmed from
        the video). Only the waveform around the clip is read."""
        fps = fps or self.fps
        if self.kind == "wav2vec2_file":
            # the originals' clamp: frames i-r .. i+r within [0, S' - 1] (the padded features)
            return self.file_features(audio, fps).window(start, frames, self.radius)
        total = audio.num_frames(fps)
        lo = max(0, start - self.radius - self.context)
        hi = min(total, start + frames + self.lookahead_frames(fps))
        sr = audio.sample_rate
        a = int(lo * sr // fps)
        b = min(len(audio.samples), math.ceil(hi * sr / fps))
        seg = torch.from_numpy(np.ascontiguousarray(audio.samples[a:b]))
        feats = self.extractor(fps)(seg, hi - lo)  # (hi - lo, L, D)
        idx = torch.arange(start - self.radius, start + frames + self.radius).clamp(0, total - 1) - lo
        wide = feats.index_select(0, idx)  # (frames + 2r, L, D)
        return window_features(wide, self.radius)[self.radius : self.radius + frames]
