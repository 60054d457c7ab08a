"""talkfast.threads: the thread count from affinity and cgroup quota, the OpenMP wait policy set
before torch loads, and ``--threads N``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from talkfast import threads

REPO = Path(__file__).resolve().parents[1]


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    root.mkdir(exist_ok=True)
    return proc, root


def test_cgroup_v2_quota_of_the_group_and_its_parents(tmp_path: Path) -> None:
    proc, root = _cgroup(tmp_path, "0::/a/b", {"a/b/cpu.max": "150000 100000", "a/cpu.max": "max 100000",
                                              "cpu.max": "400000 100000"})
    assert threads.cgroup_cpu_limit(proc, root) == pytest.approx(1.5)
    (root / "a" / "cpu.max").write_text("100000 100000\n")  # a parent's tighter limit applies too
    assert threads.cgroup_cpu_limit(proc, root) == pytest.approx(1.0)


def test_cgroup_v2_without_a_quota(tmp_path: Path) -> None:
    proc, root = _cgroup(tmp_path, "0::/a", {"a/cpu.max": "max 100000", "cpu.max": "garbage"})
    assert threads.cgroup_cpu_limit(proc, root) is None
    assert threads.cgroup_cpu_limit(tmp_path / "missing", root) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc, root = _cgroup(tmp_path, "4:cpu,cpuacct:/docker/x\n3:memory:/docker/x",
                         {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000",
                          "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"})
    assert threads.cgroup_cpu_limit(proc, root) == pytest.approx(3.0)
    (root / "cpu,cpuacct/docker/x/cpu.cfs_quota_us").write_text("-1\n")  # -1: no quota
    assert threads.cgroup_cpu_limit(proc, root) is None


@pytest.mark.parametrize(("affinity", "quota", "expected"),
                         [(4, None, 4), (4, 1.5, 1), (4, 2.0, 2), (2, 8.0, 2), (8, 0.2, 1), (1, None, 1)])
def test_available_cores_is_the_smaller_of_affinity_and_whole_quota(affinity, quota, expected) -> None:
    assert threads.available_cores(affinity=affinity, quota=quota) == expected


def test_this_process_gets_at_most_its_affinity() -> None:
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_wait_policy_never_overrides_the_user() -> None:
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    added = threads.prepare_environment(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"} and added == {"KMP_BLOCKTIME": "0"}
    env = {}
    threads.prepare_environment(env)
    assert env == threads.WAIT_ENVIRONMENT


def test_default_threads_honours_a_valid_omp_num_threads() -> None:
    assert threads.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert threads.default_threads({"OMP_NUM_THREADS": "5,2"}) == 5  # OpenMP's nested-list form
    for bad in ("0", "x", "", "99999"):
        assert threads.default_threads({"OMP_NUM_THREADS": bad}) == threads.available_cores()


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two", str(threads.MAX_THREADS + 1)])
def test_threads_option_rejects_bad_counts(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        threads.thread_count(text)


@pytest.mark.parametrize("command", ["generate", "batch", "bench", "quality"])
def test_threads_option_is_offered(command: str, capsys) -> None:
    from talkfast.app.cli import build_parser

    parser = build_parser()
    extra = {"batch": ["m.jsonl"]}.get(command, [])
    assert parser.parse_args([command, *extra, "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([command, *extra, "--threads", "0"])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


# The command's own process: the wait policy is in the environment when torch is imported, and
# the thread count is --threads, else the available cores. The command stops right after.
PROBE = r"""
import json, os, sys
seen = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "env" not in seen:
            seen["env"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
        return None
sys.meta_path.insert(0, Watch())
from talkfast import threads
from talkfast.app import cli
real = threads.apply
def apply_then_stop(n):
    real(n)
    import torch
    print(json.dumps({"before_torch": seen.get("env"), "threads": torch.get_num_threads(),
                      "cores": threads.available_cores()}))
    raise SystemExit(0)
threads.apply = apply_then_stop
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("args", [["--threads", "1"], []])
def test_cli_sets_wait_policy_before_torch_and_thread_count(args) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env["PYTHONPATH"] = str(REPO / "src")
    run = subprocess.run([sys.executable, "-c", PROBE, "generate", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["before_torch"] == threads.WAIT_ENVIRONMENT
    assert seen["threads"] == (1 if args else seen["cores"])


def test_generate_leaves_a_core_for_the_decoder_unless_the_user_chose() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.leave_core_for_decode(None, torch.device("cpu"), environ={}, cores=3) == 2
        assert torch.get_num_threads() == 2
        assert threads.leave_core_for_decode(None, torch.device("cpu"), environ={}, cores=1) is None  # one core: keep it
        assert threads.leave_core_for_decode(4, torch.device("cpu"), environ={}, cores=8) is None  # --threads 4
        assert threads.leave_core_for_decode(None, torch.device("cpu"), environ={"OMP_NUM_THREADS": "3"}, cores=8) is None
        assert threads.leave_core_for_decode(None, torch.device("cuda"), environ={}, cores=8) is None
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
