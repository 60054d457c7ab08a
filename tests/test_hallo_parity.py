"""Parity with Hallo's released code (issue 13): scripts/hallo_parity.py.

Hallo's code is not part of talkfast: set ``TALKFAST_HALLO_SRC`` to a checkout of
github.com/fudan-generative-vision/hallo (commit 8fd7c57: ``hallo/``, ``configs/``, ``scripts/``)
to run the comparisons; without it they are skipped. Hallo's own imports (einops, yaml, diffusers)
must be importable in this environment. The fp16/fp32 verdict rule itself is tested without Hallo.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT = SCRIPTS / "hallo_parity.py"


def hallo_src() -> Path:
    value = os.environ.get("TALKFAST_HALLO_SRC")
    if not value:
        pytest.skip("TALKFAST_HALLO_SRC is not set: it names a Hallo source checkout "
                    "(github.com/fudan-generative-vision/hallo, with hallo/, configs/ and scripts/)")
    src = Path(value).expanduser()
    if not (src / "hallo" / "models" / "unet_3d.py").is_file():
        pytest.skip(f"TALKFAST_HALLO_SRC={value} holds no hallo/models/unet_3d.py: not a Hallo source checkout")
    return src


def run_script(src: Path, dtype: str, out: Path) -> tuple[subprocess.CompletedProcess, str]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, str(SCRIPT), "--hallo-src", str(src), "--dtype", dtype, "--json", str(out)],
                       check=False, capture_output=True, text=True, env=env,
                       timeout=900)
    return r, r.stdout[-6000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_fp64_parity_with_hallo(tmp_path):
    src = hallo_src()
    out = tmp_path / "parity.json"
    r, log = run_script(src, "fp64", out)
    assert out.exists(), log
    result = json.loads(out.read_text())
    assert r.returncode == 0 and result["verdict"] == "PASS", log
    # what was compared: the UNet call, every reader's bank, and both clips
    assert result["unet_call"]["output"]["max_rel"] <= 1e-10
    assert result["unet_call"]["reference_banks"]["readers"] == 16
    assert len(result["clips"]["clips"]) == 2
    # the comparison can see the Hallo switches: with them off the UNet call is far off
    assert result["unet_call_control_switches_off"]["max_rel"] > 1e-4


@pytest.mark.slow
def test_fp32_within_hallo_noise_floor(tmp_path):
    """fp32 takes the fp16 run's code path (Hallo's fp64 reference, the noise rule) in a fraction
    of its time."""
    src = hallo_src()
    out = tmp_path / "parity.json"
    r, log = run_script(src, "fp32", out)
    assert out.exists(), log
    result = json.loads(out.read_text())
    assert r.returncode == 0 and result["verdict"] == "PASS", log
    rows = {row["quantity"]: row for row in result["noise_floor"]}
    assert sum(row["judged"] for row in rows.values()) == 2 + 2 * 4  # (a) output and banks, 4 per clip
    assert rows["(a) output"]["floor_hallo_vs_reference"]["max_abs"] > 0  # the reference is another computation
    # at fp32 the rule can still see the Hallo switches
    control = rows["(a) control, switches off (not judged)"]
    assert not control["judged"] and control["ratio"] > 100 * result["noise_multiple"]


def test_noise_rule(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the script sets it when unset; keep it out of this process
    import hallo_parity as hp

    def d(max_abs):
        return {"max_abs": max_abs, "max_rel": max_abs / 2}

    assert hp.NOISE_MULTIPLE == 2.0
    at_limit = hp.noise_row("x", d(2e-3), d(1e-3), d(1e-3))
    assert at_limit["ok"] and at_limit["ratio"] == 2.0
    over = hp.noise_row("y", d(2.1e-3), d(1e-3), d(1e-3))
    assert not over["ok"]
    assert hp.noise_row("exact", d(0.0), d(0.0), d(0.0))["ok"]  # no floor: must be bit-identical
    no_floor = hp.noise_row("z", d(1e-9), d(0.0), d(1e-9))
    assert no_floor["ratio"] == math.inf and not no_floor["ok"]
    control = hp.noise_row("control", d(1.0), d(1e-3), d(1.0), judged=False)
    a = {"reference_banks": {"mismatched": []}}
    assert hp.noise_failures(a, [at_limit, control]) == []  # the control is never judged
    assert hp.noise_failures(a, [at_limit, over, no_floor]) == ["y", "z"]
    assert hp.noise_failures({"reference_banks": {"mismatched": ["up_blocks.1"]}}, [at_limit]) == [
        "(a) reference banks: readers paired differently"]
