"""Run a sample of the quick tests one at a time, each in a fresh pytest process.

Every test must pass when run alone (``pytest tests/x.py::test_y``): a test that only passes after
another one has filled a cache, set a global or written a file is caught here. Running all ~400
tests alone would double the suite's time, so ``.ci/run`` takes a sample: ``--count`` tests drawn
from the non-slow ones, spread over the test modules, with a seed that changes with every commit
(the hash of ``git rev-parse HEAD``, or ``--seed``), so that successive commits cover different tests.

    python scripts/tests_alone.py [--count 12] [--seed N] [--list]

Prints one line per test and ends with ``N passed, M failed``; exit code 1 if any failed.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def collect() -> list[str]:
    """The ids of the tests not marked slow."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "not slow", "tests"], cwd=REPO, capture_output=True, text=True, check=False)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if proc.returncode != 0 or not ids:
        raise SystemExit(f"error: collecting the tests failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return ids


def commit_seed() -> int:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    head = proc.stdout.strip()
    return int(head[:12], 16) if proc.returncode == 0 and head else 0


def sample(ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` ids, one module at a time in a shuffled order of modules, so that a sample covers
    as many modules as it can instead of the largest ones."""
    rng = random.Random(seed)
    by_module: dict[str, list[str]] = {}
    for i in ids:
        by_module.setdefault(i.split("::", 1)[0], []).append(i)
    for tests in by_module.values():
        rng.shuffle(tests)
    modules = sorted(by_module)
    rng.shuffle(modules)
    out: list[str] = []
    while len(out) < min(count, len(ids)):
        for m in modules:
            if by_module[m] and len(out) < count:
                out.append(by_module[m].pop())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=12, help="how many tests to run alone (default 12)")
    p.add_argument("--seed", type=int, default=None, help="sample seed (default: from the commit hash)")
    p.add_argument("--list", action="store_true", help="print the sample and run nothing")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    seed = commit_seed() if args.seed is None else args.seed
    chosen = sample(collect(), args.count, seed)
    print(f"tests run alone (seed {seed}): {len(chosen)}", flush=True)
    if args.list:
        print("\n".join(chosen))
        return 0
    failed = []
    for test_id in chosen:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
                              cwd=REPO, capture_output=True, text=True, check=False)
        ok = proc.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} {time.perf_counter() - t0:6.1f} s  {test_id}", flush=True)
        if not ok:
            failed.append(test_id)
            print(proc.stdout[-4000:] + proc.stderr[-2000:], flush=True)
    print(f"{len(chosen) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
