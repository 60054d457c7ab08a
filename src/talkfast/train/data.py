"""Training examples from the synthetic corpus: random clips with their reference, motion
frames, audio features and the face regions known exactly from the rendering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..data.corpus import load_corpus
from ..errors import InputError
from ..face.masks import MaskSet
from ..models.config import ModelConfig
from ..pipeline.conditioning import AudioConditioner, prepare_portrait
from .objective import ClipExample


@dataclass
class _Prepared:
    frames: torch.Tensor  # (T, 3, H, W) uint8 (kept small: a corpus holds hundreds of samples)
    reference: torch.Tensor  # (3, H, W) in [-1, 1]
    audio: torch.Tensor  # (T, window, L, D)
    masks: MaskSet
    locator: torch.Tensor
    identity: torch.Tensor
    latents: torch.Tensor | None = None  # (1 + T, C, h, w): reference, then every frame


def _pixels(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(rgb, np.ndarray):
        rgb = torch.from_numpy(np.array(rgb, dtype=np.uint8)).movedim(-1, -3)
    return rgb.float() / 127.5 - 1.0


class CorpusClips:
    """Random training clips of ``clip_frames`` frames (default ``cfg.clip_frames``); everything per
    sample is prepared once. With ``encoder`` (pixels -> scaled latents, e.g. a bound
    :func:`~talkfast.train.objective.encode_latents`) each sample's latents are computed once too and
    travel with the examples, so a training step does not run the VAE."""

    def __init__(self, corpus_dir: str | Path, cfg: ModelConfig, split: str = "train", first_clip_prob: float = 0.3,
                 clip_frames: int | None = None, encoder: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg, self.first_clip_prob, self.encoder = cfg, first_clip_prob, encoder
        self.clip_frames = clip_frames or cfg.clip_frames
        self.samples = load_corpus(corpus_dir, split)
        if not self.samples:
            raise InputError(f"no {split} samples in {corpus_dir}")
        size = int(self.samples[0].meta["size"])
        if size != cfg.image_size:
            raise InputError(f"corpus frames are {size}px, the {cfg.name} model wants {cfg.image_size}px")
        self.audio = AudioConditioner(cfg.audio_features, fps=int(self.samples[0].fps), radius=(cfg.audio_window - 1) // 2)
        self._cache: dict[int, _Prepared] = {}

    def prepared(self, i: int) -> _Prepared:
        if i not in self._cache:
            s, cfg = self.samples[i], self.cfg
            regions = s.regions()
            frames = torch.from_numpy(np.ascontiguousarray(s.frames())).movedim(-1, -3).contiguous()
            audio = s.audio()
            feats = self.audio.clip(audio, 0, frames.shape[0], fps=s.fps)
            # The same conditioning code as generation, with the corpus's exact face regions.
            por = prepare_portrait(Image.fromarray(s.reference()), cfg.image_size, cfg.latent_size,
                                   cfg.unet.num_levels, cfg.image_embed_dim, "pixels", regions=regions)
            latents = None
            if self.encoder is not None:
                latents = self.encoder(torch.cat([por.pixels[None], _pixels(frames)])).cpu()
            self._cache[i] = _Prepared(frames=frames, reference=por.pixels, audio=feats, masks=por.masks,
                                       locator=por.locator_input, identity=por.identity, latents=latents)
        return self._cache[i]

    def example(self, gen: torch.Generator) -> ClipExample:
        p = self.prepared(int(torch.randint(len(self.samples), (), generator=gen)))
        f, m = self.clip_frames, self.cfg.motion_frames
        t = p.frames.shape[0]
        # Frame indices of the clip; a short sample is padded by holding its last frame.
        index = torch.arange(max(t, f)).clamp(max=t - 1)
        first = bool(torch.rand((), generator=gen) < self.first_clip_prob) or len(index) - f < m
        start = 0 if first else int(torch.randint(m, len(index) - f + 1, (), generator=gen))
        clip = index[start : start + f]
        before = None if first else index[start - m : start]
        motion = p.reference[None].expand(m, -1, -1, -1) if first else _pixels(p.frames[before])
        latents = None
        if p.latents is not None:
            ref_lat, frame_lat = p.latents[:1], p.latents[1:]
            motion_lat = ref_lat.expand(m, -1, -1, -1) if first else frame_lat[before]
            latents = torch.cat([ref_lat, motion_lat, frame_lat[clip]])
        return ClipExample(reference=p.reference, motion=motion, frames=_pixels(p.frames[clip]),
                           audio=p.audio[clip], masks=p.masks, locator=p.locator,
                           identity=p.identity, latents=latents)

    def frame_batch(self, gen: torch.Generator, batch: int, crop: int | None = None) -> torch.Tensor:
        """Random single frames (batch, 3, H, W) in [-1, 1] for the autoencoder; with ``crop``, a
        random ``crop`` x ``crop`` window of each (a convolutional autoencoder trains as well on
        windows, at a fraction of the cost)."""
        out = []
        for _ in range(batch):
            p = self.prepared(int(torch.randint(len(self.samples), (), generator=gen)))
            frame = p.frames[int(torch.randint(p.frames.shape[0], (), generator=gen))]
            if crop is not None and crop < min(frame.shape[-2:]):
                y, x = (int(torch.randint(n - crop + 1, (), generator=gen)) for n in frame.shape[-2:])
                frame = frame[:, y : y + crop, x : x + crop]
            out.append(_pixels(frame))
        return torch.stack(out)
