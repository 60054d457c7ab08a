"""How clips chain and pair their reference contexts follows the network's configuration
(ModelConfig.hallo_chaining), not the preset's name: a renamed Hallo/MEMO configuration keeps the
released behaviour (pixel-chained motion frames, interleaved reference contexts), and a network
trained otherwise that happens to be called "hallo" does not get it."""

from __future__ import annotations

import pytest

from talkfast.models.config import HALLO, MEMO_TINY, PRESETS, SMALL, TINY
from talkfast.pipeline.generate import GenerateOptions


def _defaults(opts: GenerateOptions) -> tuple[str, bool]:
    return opts.motion_source, opts.hallo_context_tiling


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_its_released_behaviour(name: str) -> None:
    released = name in ("hallo", "memo", "memo_tiny")  # the presets that chained before the field existed
    by_name = GenerateOptions().resolved(name)
    by_config = GenerateOptions().resolved(PRESETS[name])
    assert _defaults(by_name) == _defaults(by_config) == (("pixels", True) if released else ("latents", False))
    assert PRESETS[name].hallo_chaining is released


@pytest.mark.parametrize("cfg, expected", [
    (HALLO.replace(name="hallo_finetuned"), ("pixels", True)),
    (MEMO_TINY.replace(name="my_memo"), ("pixels", True)),
    (TINY.replace(name="hallo"), ("latents", False)),
    (SMALL.replace(name="memo"), ("latents", False)),
])
def test_a_renamed_configuration_keeps_its_network_behaviour(cfg, expected) -> None:
    import torch

    from talkfast.models.loading import build_random
    from talkfast.pipeline.conditioning import AudioConditioner
    from talkfast.pipeline.generate import TalkingHeadPipeline

    assert _defaults(GenerateOptions().resolved(cfg)) == expected
    if cfg.image_size <= 128:  # the pipeline asks its own network's configuration
        net, vae = build_random(cfg)
        pipe = TalkingHeadPipeline(net, vae, AudioConditioner("mel"), dtype=torch.float32)
        assert _defaults(pipe.resolve()) == expected
    # what the user or the model folder chose still wins
    assert GenerateOptions(motion_source="reference").resolved(cfg).motion_source == "reference"
    assert GenerateOptions().resolved(cfg, "latents").motion_source == "latents"
    assert GenerateOptions(hallo_context_tiling=not expected[1]).resolved(cfg).hallo_context_tiling is (not expected[1])
