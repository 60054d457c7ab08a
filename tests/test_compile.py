"""``--compile on``: the denoiser's layers compiled by torch.compile (talkfast.models.compiled).

Compiling every layer of even the tiny model takes minutes on a loaded 2-core machine (each layer
is its own graph, each kernel a C++ build), so the inductor test compiles the down/upsamplers only:
the same wrapper, settings, cache folder and fallback as every other layer, a few kernels.
"""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.resnet import Downsample2D, Upsample2D

from talkfast import paths
from talkfast.accelerators import AccelConfig, CachingConfig, KeySchedule, build_accelerator
from talkfast.models.compiled import compile_denoiser, compiled_regions, use_cache_dir
from talkfast.pipeline.generate import GenerateOptions

from tiny_pipeline import generated_frames, randomized_tiny_pipeline, tone_inputs

# compiled vs eager fp32: inductor reorders sums (frozen, prepacked convolutions); over the few
# steps of a generation the differences stay within this (the eager 1-vs-2-thread floor is ~1e-6)
TOL = dict(rtol=1e-4, atol=1e-4)
SAMPLERS = (Downsample2D, Upsample2D)  # the regions the tests compile (few kernels, quick to trace)


@pytest.fixture(scope="module")
def inputs():
    return tone_inputs(0.6)


def _compiled_frames(pipe, inputs, acc=None, steps=2):
    frames = []
    img, audio = inputs
    pipe.generate(img, audio, None, GenerateOptions(steps=steps, seed=42, compile="on"), accelerator=acc,
                  on_clip=frames.append)
    if acc is not None:
        acc.detach()
    return torch.cat(frames)


@pytest.mark.slow
def test_inductor_matches_eager_and_a_second_pipeline_reuses_the_cache(tmp_path, monkeypatch, inputs) -> None:
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    first = randomized_tiny_pipeline()
    eager = generated_frames(first, inputs, steps=2)
    names = compile_denoiser(first.net, regions=SAMPLERS)
    assert names and all("samplers" in n for n in names)
    misses = counters["inductor"]["fxgraph_cache_miss"]
    compiled = _compiled_frames(first, inputs)
    assert compiled_regions(first.net) == {n: None for n in names}  # none fell back to eager
    assert counters["inductor"]["fxgraph_cache_miss"] > misses  # it did compile, into the cache folder
    assert any((tmp_path / "inductor").rglob("*.py"))
    torch.testing.assert_close(compiled, eager, **TOL)

    # a second pipeline (new modules, same shapes) runs the code compiled for the first: nothing is
    # lowered again
    second = randomized_tiny_pipeline()
    compile_denoiser(second.net, regions=SAMPLERS)
    misses = counters["inductor"]["fxgraph_cache_miss"]
    torch.testing.assert_close(_compiled_frames(second, inputs), eager, **TOL)
    assert counters["inductor"]["fxgraph_cache_miss"] == misses

    # Dynamo's in-memory code dropped (what a new process starts with): the graphs come from the folder
    torch._dynamo.reset()
    third = randomized_tiny_pipeline()
    compile_denoiser(third.net, regions=SAMPLERS)
    hits = counters["inductor"]["fxgraph_cache_hit"]
    torch.testing.assert_close(_compiled_frames(third, inputs), eager, **TOL)
    assert counters["inductor"]["fxgraph_cache_miss"] == misses
    assert counters["inductor"]["fxgraph_cache_hit"] > hits


def test_compiled_layers_run_every_accelerator_path_and_off_is_eager(inputs) -> None:
    """Dynamo-traced down/upsamplers (backend "eager": no code generation, so the outputs equal the eager
    ones exactly) under LightningCP's full, capturing and reduced (batched shallow) passes."""
    pipe = randomized_tiny_pipeline()
    acc_cfg = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3)))
    eager = generated_frames(pipe, inputs, build_accelerator(acc_cfg), steps=4)
    compile_denoiser(pipe.net, backend="eager", regions=SAMPLERS)
    compiled = _compiled_frames(pipe, inputs, build_accelerator(acc_cfg), steps=4)
    assert all(v is None for v in compiled_regions(pipe.net).values())
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    # "off" on a compiled pipeline runs it eagerly (the compiled code is kept for a later "on")
    assert torch.equal(generated_frames(pipe, inputs, build_accelerator(acc_cfg), steps=4), eager)


def test_a_layer_that_cannot_compile_runs_eagerly(caplog, inputs) -> None:
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    pipe = randomized_tiny_pipeline()
    eager = generated_frames(pipe, inputs, steps=2)
    compile_denoiser(pipe.net, backend=broken, regions=SAMPLERS)
    with caplog.at_level(logging.DEBUG, logger="talkfast.models.compiled"):
        frames = _compiled_frames(pipe, inputs)
    assert torch.equal(frames, eager)
    failed = compiled_regions(pipe.net)
    assert failed and all(why is not None and "no compiler here" in why for why in failed.values()), failed
    assert "runs eagerly" in caplog.text


def test_cache_folder_is_talkfasts_unless_the_user_set_one(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TALKFAST_CACHE_DIR", str(tmp_path / "tf"))
    assert paths.cache_dir() == tmp_path / "tf"
    assert use_cache_dir() == str(tmp_path / "tf" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("TALKFAST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "talkfast"


def test_cache_folder_is_created_private_and_a_shared_one_is_refused(tmp_path, monkeypatch) -> None:
    """Inductor loads pickled entries and generated modules from its cache folder: talkfast creates a
    missing one 0700 (whatever the umask) and refuses, before compiling anything, one that other
    users can write or that belongs to someone else."""
    import os
    import stat

    from talkfast.errors import InputError

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TALKFAST_CACHE_DIR", str(tmp_path / "tf"))
    mine = use_cache_dir()
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o700
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a" / "not_yet"))  # the user's: created 0700 too
    old_umask = os.umask(0o002)  # what inductor would create it with: group-writable
    try:
        assert use_cache_dir() == str(tmp_path / "a" / "not_yet")
        assert use_cache_dir() == str(tmp_path / "a" / "not_yet")  # a second run accepts it
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "not_yet").st_mode) == 0o700

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))
    with pytest.raises(InputError, match=r"writable by other users \(mode 0777\).*chmod go-w"):
        use_cache_dir()
    pipe = randomized_tiny_pipeline()
    with pytest.raises(InputError):
        compile_denoiser(pipe.net, backend="eager", regions=SAMPLERS)
    assert compiled_regions(pipe.net) == {}  # nothing was wrapped
    shared.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(shared).st_uid + 1)
    with pytest.raises(InputError, match="belongs to another user"):
        use_cache_dir()


def test_compile_option_reaches_generate_options(monkeypatch, tmp_path) -> None:
    from talkfast.app.cli import main
    from talkfast.pipeline.generate import TalkingHeadPipeline

    seen = []

    class Stop(Exception):
        pass

    def fake_generate(self, image, audio, output, opts, **kwargs):
        seen.append(opts)
        raise Stop

    monkeypatch.setattr(TalkingHeadPipeline, "generate", fake_generate)
    for value in ("on", "off"):
        with pytest.raises(Stop):
            main(["generate", "--random-weights", "--model", "tiny", "--device", "cpu", "--accel", "off", "-q",
                  "--compile", value, "-o", str(tmp_path / "x.mp4")])
    assert [o.compile for o in seen] == ["on", "off"]
    with pytest.raises(ValueError, match="--compile"):
        GenerateOptions(compile="maybe").resolved("tiny")
