"""The tiny randomized pipeline shared by the accelerator and parallel tests (a plain module, not a
fixture: tests/test_parallel.py also runs as a torchrun worker script outside pytest), and the
degenerate accelerator settings every model family's tests run."""

import torch

from talkfast.accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule
from talkfast.pipeline.loader import load_pipeline


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
