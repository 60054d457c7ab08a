"""The tiny randomized pipeline shared by the accelerator and parallel tests (a plain module, not a
fixture: tests/test_parallel.py also runs as a torchrun worker script outside pytest), and the
degenerate accelerator settings every model family's tests run."""

from pathlib import Path

import numpy as np
import torch

from talkfast.accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule
from talkfast.io.audio import Audio
from talkfast.io.image import load_image
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

PORTRAIT = Path(__file__).resolve().parents[1] / "src/talkfast/assets/examples/portrait.png"


def every_step(method: str, **caching) -> AccelConfig:
    """``method`` with every step a key step: its degenerate setting, which must equal the baseline."""
    return AccelConfig(method, CachingConfig(keys=KeySchedule("uniform", interval=1), **caching))


# The degenerate setting of every caching method (and LightningCP + DFA incl. temporal attention).
DEGENERATE = {
    "lightningcp": every_step("lightningcp"),
    "deepcache": every_step("deepcache"),
    "fasterdiffusion": every_step("fasterdiffusion", noise_injection=0.0),
    "lightningcp+dfa": every_step("lightningcp").replace(dfa=DFAConfig(temporal=True)),
}


def randomized_tiny_pipeline():
    """The ``tiny`` preset on CPU in fp32 with every weight drawn at random (seed 0): zero-initialised
    layers would hide wiring bugs."""
    p = load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in p.net.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
    return p


def tone_inputs(seconds: float):
    """The bundled portrait and ``seconds`` of an amplitude-modulated 220 Hz tone at 16 kHz."""
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return load_image(PORTRAIT), Audio(wave, sr, sr, 1)


def generated_frames(pipe, inputs, acc=None, steps: int = 8, seed: int = 42, sampler: str | None = None) -> torch.Tensor:
    """Every frame ``pipe`` makes of ``inputs`` (nothing written), with ``acc`` attached for the run
    and detached after it; ``sampler`` None: the family's own."""
    frames = []
    img, audio = inputs
    pipe.generate(img, audio, None, GenerateOptions(steps=steps, seed=seed, sampler=sampler), accelerator=acc,
                  on_clip=frames.append)
    if acc is not None:
        acc.detach()
    return torch.cat(frames)
