"""``--parallel``: a generation split over 2 CPU processes (gloo, launched with torchrun) gives the
frames of the single-process run, for every split mode and the caching accelerators; only rank 0
writes; without torchrun the flag is a clear error.

This file is also the worker script: ``python -m torch.distributed.run --nproc_per_node=N
tests/test_parallel.py OUT`` runs every case of ``CASES`` on each rank (one process group for all)
and rank 0 saves the frames to OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_pipeline import randomized_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "src/talkfast/assets/examples/portrait.png"
STEPS = 7

# name -> (parallel mode, accelerator config or None)
CASES = {
    "lcp-steps": ("steps", "lightningcp"),
    "lcp-cfg": ("cfg", "lightningcp"),
    "lcp-steps+cfg": ("steps+cfg", "lightningcp"),
    "lcp-dfa-steps": ("steps", "lightningcp+dfa"),
    "fd-steps": ("steps", "fasterdiffusion"),
    "fd-dfa-steps+cfg": ("steps+cfg", "fasterdiffusion+dfa"),
    "dc-steps": ("steps", "deepcache"),
    "off-cfg": ("cfg", None),
}


def make_accel(kind):
    from talkfast.accelerators import (
        AccelConfig,
        CachingConfig,
        DFAConfig,
        KeySchedule,
        build_accelerator,
    )

    if kind is None:
        return None
    method, _, plug = kind.partition("+")
    cfg = AccelConfig(method, CachingConfig(keys=KeySchedule("uniform", interval=3)),
                      dfa=DFAConfig() if plug == "dfa" else None)
    return build_accelerator(cfg)


def inputs():
    from talkfast.io.audio import Audio
    from talkfast.io.image import load_image

    sr = 16000
    t = np.arange(int(0.3 * sr)) / sr  # 8 frames: 2 clips of the tiny model
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return load_image(PORTRAIT), Audio(wave, sr, sr, 1)


def run(pipe, kind, wrap=None):
    from talkfast.pipeline.generate import GenerateOptions

    frames = []
    img, audio = inputs()
    pipe.generate(img, audio, None, GenerateOptions(steps=STEPS, guidance=2.0), accelerator=make_accel(kind),
                  on_clip=frames.append, wrap_predictor=wrap)
    return torch.cat(frames)


def worker(out: str, names: list[str]) -> None:
    import torch.distributed as dist

    from talkfast.parallel.distributed import ParallelRun, StepSplitter

    torch.set_num_threads(1)
    par = ParallelRun.from_env("steps", "cpu")
    pipe = randomized_tiny_pipeline()
    results = {}
    for name in names or list(CASES):
        mode, kind = CASES[name]
        results[name] = run(pipe, kind, StepSplitter(mode, pipe).wrap)
    torch.save(results, f"{out}.rank{dist.get_rank()}")  # every rank's frames: the test checks they agree
    par.close()


def torchrun(args, nproc=2, timeout=120, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def launch(tmp_path_factory, nproc, names=()):
    out = tmp_path_factory.mktemp(f"par{nproc}") / "frames.pt"
    r = torchrun([__file__, str(out), *names], nproc=nproc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [torch.load(f"{out}.rank{rank}") for rank in range(nproc)]


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    return launch(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def four_procs(tmp_path_factory):
    return launch(tmp_path_factory, 4, FOUR)


@pytest.fixture(scope="module")
def single(request):
    torch.set_num_threads(1)
    pipe = randomized_tiny_pipeline()
    return {name: run(pipe, kind) for name, (_, kind) in CASES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_the_single_process_frames(two_procs, single, name):
    check(two_procs, single, name)


FOUR = ["lcp-steps", "lcp-steps+cfg", "fd-dfa-steps+cfg"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FOUR)
def test_four_processes_give_the_single_process_frames(four_procs, single, name):
    """4 ranks: steps in 4 shards (a group of 2 reduced steps leaves 2 ranks idle), and steps+cfg as
    2 halves x 2 shards, with the key-step cache broadcast inside each half's ranks."""
    check(four_procs, single, name)


def check(per_rank, single, name):
    expected = single[name]
    for rank, frames in enumerate(per_rank):  # every rank followed the same latents
        got = frames[name]
        assert got.shape == expected.shape, rank
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=lambda m, r=rank: f"rank {r}: {m}")


@pytest.mark.slow
def test_cli_only_rank_zero_writes(tmp_path):
    out = tmp_path / "talk.mp4"
    r = torchrun(["-m", "talkfast", "generate", "--random-weights", "--model", "tiny", "--steps", "4",
                  "--accel", "quality", "--parallel", "steps", "-q", "-o", str(out)], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json", "talk.mp4"]
    side = json.loads((tmp_path / "talk.json").read_text())
    assert side["parallel"]["world_size"] == 2 and side["parallel"]["mode"] == "steps"
    assert r.stdout.count("wrote ") == 1


def test_parallel_without_torchrun_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from talkfast.app.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    code = main(["generate", "--random-weights", "--model", "tiny", "--parallel", "steps", "-o", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "torchrun" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_world_sizes():
    from talkfast.parallel.distributed import ParallelError, layout_of, shard_sizes

    assert layout_of("steps", 3) == (1, 3) and layout_of("cfg", 2) == (2, 1) and layout_of("steps+cfg", 4) == (2, 2)
    for mode, world in [("steps", 1), ("cfg", 4), ("steps+cfg", 3), ("tensor", 2)]:
        with pytest.raises(ParallelError):
            layout_of(mode, world)
    assert shard_sizes(5, 2) == [3, 2] and shard_sizes(1, 3) == [1, 0, 0]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2:])
