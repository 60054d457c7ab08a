"""Training examples from the synthetic corpus: random clips with their reference, motion
frames, audio features and the face regions known exactly from the rendering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.corpus import Sample, load_corpus
from ..errors import InputError
from ..face.detect import Box, FaceRegions
from ..face.masks import MaskSet
from ..models.config import ModelConfig
from ..pipeline.conditioning import AudioConditioner, prepare_portrait
from .objective import ClipExample


def corpus_regions(sample: Sample) -> FaceRegions:
    """Face and lip boxes of the sample's reference pose (its first frame), exact from the renderer."""
    size = int(sample.meta["size"])
    return FaceRegions(Box(*sample.face_boxes()[0].tolist()), Box(*sample.mouth_boxes()[0].tolist()),
                       (size, size), True, "corpus")


@dataclass
class _Prepared:
    frames: torch.Tensor  # (T, 3, H, W) in [-1, 1]
    reference: torch.Tensor  # (3, H, W)
    audio: torch.Tensor  # (T, window, L, D)
    masks: MaskSet
    locator: torch.Tensor
    identity: torch.Tensor


def _pixels(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).movedim(-1, -3).float() / 127.5 - 1.0


class CorpusClips:
    """Random training clips of ``cfg.clip_frames`` frames; everything per sample is prepared once."""

    def __init__(self, corpus_dir: str | Path, cfg: ModelConfig, split: str = "train", first_clip_prob: float = 0.3):
        self.cfg, self.first_clip_prob = cfg, first_clip_prob
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
            regions = corpus_regions(s)
            frames = _pixels(s.frames())
            audio = s.audio()
            feats = self.audio.clip(audio, 0, frames.shape[0], fps=s.fps)
            # The same conditioning code as generation, with the corpus's exact face regions.
            por = prepare_portrait(Image.fromarray(s.reference()), cfg.image_size, cfg.latent_size,
                                   cfg.unet.num_levels, cfg.image_embed_dim, "pixels", regions=regions)
            self._cache[i] = _Prepared(frames=frames, reference=por.pixels, audio=feats, masks=por.masks,
                                       locator=por.locator_input, identity=por.identity)
        return self._cache[i]

    def example(self, gen: torch.Generator) -> ClipExample:
        cfg = self.cfg
        p = self.prepared(int(torch.randint(len(self.samples), (), generator=gen)))
        f, m = cfg.clip_frames, cfg.motion_frames
        t = p.frames.shape[0]
        if t < f:  # short sample: pad by holding the last frame
            pad = f - t
            frames = torch.cat([p.frames, p.frames[-1:].expand(pad, -1, -1, -1)])
            audio = torch.cat([p.audio, p.audio[-1:].expand(pad, *p.audio.shape[1:])])
            t = f
        else:
            frames, audio = p.frames, p.audio
        first = bool(torch.rand((), generator=gen) < self.first_clip_prob) or t - f < m
        start = 0 if first else int(torch.randint(m, t - f + 1, (), generator=gen))
        motion = p.reference[None].expand(m, -1, -1, -1) if first else frames[start - m : start]
        return ClipExample(reference=p.reference, motion=motion, frames=frames[start : start + f],
                           audio=audio[start : start + f], masks=p.masks, locator=p.locator, identity=p.identity)

    def frame_batch(self, gen: torch.Generator, batch: int) -> torch.Tensor:
        """Random single frames (batch, 3, H, W) for the autoencoder."""
        out = []
        for _ in range(batch):
            p = self.prepared(int(torch.randint(len(self.samples), (), generator=gen)))
            out.append(p.frames[int(torch.randint(p.frames.shape[0], (), generator=gen))])
        return torch.stack(out)
