"""The tiny randomized pipeline shared by the accelerator and parallel tests (a plain module, not a
fixture: tests/test_parallel.py also runs as a torchrun worker script outside pytest)."""

import torch

from talkfast.pipeline.loader import load_pipeline


def randomized_tiny_pipeline():
    """The ``tiny`` preset on CPU in fp32 with every weight drawn at random (seed 0): zero-initialised
    layers would hide wiring bugs."""
    p = load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in p.net.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
    return p
