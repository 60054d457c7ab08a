"""``talkfast bench`` on the tiny model: the files it writes and their columns, the baseline's
identities (speedup 1, capped PSNR), a method with every step a key step, ground-truth columns,
the PIL plot, FLOP counting, the metrics, and the GPU script's CPU dry run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from talkfast.accelerators import AccelConfig, CachingConfig, KeySchedule
from talkfast.errors import InputError
from talkfast.eval import bench, metrics
from talkfast.eval.cli import main as cli_main
from talkfast.io.audio import Audio
from talkfast.io.image import load_image
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CAP = metrics.PSNR_CAP
GT_COLUMNS = ("PSNR GT dB", "SSIM GT", "L1 GT", "lip-sync")


def table(markdown: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(header, {method: {column: cell}}) of the markdown table (the last block of lines)."""
    blocks: list[list[str]] = [[]]
    for ln in markdown.strip().splitlines():
        if ln.startswith("|"):
            blocks[-1].append(ln)
        elif blocks[-1]:
            blocks.append([])
    lines = [b for b in blocks if b][-1]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, rows = cells[0], cells[2:]
    return header, {r[0]: dict(zip(header, r)) for r in rows}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["bench", "--quick", "--out", str(out), "-q"])
    return rc, out, buf.getvalue()


def test_quick_bench_writes_markdown_json_and_png(quick):
    rc, out, printed = quick
    assert rc == 0
    for name in ("bench.md", "bench.json", "bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    md = (out / "bench.md").read_text()
    header, rows = table(md)
    assert tuple(header) == bench.COLUMNS
    names = list(rows)
    assert names[:2] == ["baseline", "lightningcp"] and names[-1] == "reference@8"
    assert {n.split("@")[0] for n in names[2:-1]} == {"ddim", "dpmpp2m", "unipc"}  # a control row per sampler
    # the table is the last thing printed
    assert printed.strip().splitlines()[-1].startswith("| reference@8 |")
    assert table(printed)[1] == rows

    data = json.loads((out / "bench.json").read_text())
    assert data["mode"] == "pipeline" and data["psnr_cap_db"] == CAP and data["meta"]["model"] == "tiny"
    base, lcp = data["methods"][:2]
    assert base["name"] == "baseline" and lcp["name"] == "lightningcp"
    for key in ("seconds", "seconds_per_step", "speedup", "model_speedup", "flops", "flops_ratio",
                "peak_memory_mb", "psnr_base", "ssim_base", "psnr_gt", "ssim_gt", "l1_gt", "lipsync", "cases"):
        assert key in base and key in lcp
    assert base["speedup"] == 1.0 and base["model_speedup"] == 1.0 and base["flops_ratio"] == 1.0
    assert base["psnr_base"] == CAP and base["ssim_base"] == pytest.approx(1.0)
    assert rows["baseline"]["speedup"] == "1.00x" and rows["baseline"]["PSNR base dB"] == f"{CAP:.2f}"
    assert 0 < lcp["flops_ratio"] < 1 and lcp["psnr_base"] < CAP
    assert lcp["key_steps"] == 2 and lcp["steps"] == 4 and base["key_steps"] == 4
    assert base["peak_memory_mb"] > 0
    # no ground truth, no lip-sync metric for the bundled example
    for row in rows.values():
        assert all(row[c] == "n/a" for c in GT_COLUMNS)
    assert base["psnr_gt"] is None and base["lipsync"] is None
    # time to the first frame and the real-time factor, per row (issue 26 item 5)
    fps = data["meta"]["fps"]
    for m in data["methods"]:
        assert 0 < m["first_frame_seconds"] <= m["seconds"]
        assert m["video_seconds"] == pytest.approx(sum(c["frames"] for c in m["cases"]) / fps)
        assert m["realtime_factor"] == pytest.approx(m["video_seconds"] / m["seconds"])
        for c in m["cases"]:
            assert 0 < c["first_frame_seconds"] <= c["seconds"]
            assert c["realtime_factor"] == pytest.approx(c["frames"] / fps / c["seconds"])
        cells = rows[m["name"]]
        assert cells["first frame s"] == f"{m['first_frame_seconds']:.3f}"
        assert cells["RTF"] == f"{m['realtime_factor']:.3f}x"


def test_plot_is_a_readable_png(quick):
    _, out, _ = quick
    raw = (out / "bench.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(raw) < 2_000_000
    with Image.open(out / "bench.png") as img:
        img.load()
        assert img.format == "PNG" and img.size == (960, 640)
        arr = np.asarray(img.convert("RGB"))
    assert (arr < 128).any(axis=2).mean() > 0.002  # axes, ticks and labels were drawn
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 8  # coloured points and labels, not a blank canvas


def test_quick_bench_has_controls_reference_frontier_and_stages(quick):
    _, out, _ = quick
    data = json.loads((out / "bench.json").read_text())
    rows = {m["name"]: m for m in data["methods"]}
    base, lcp, ref = rows["baseline"], rows["lightningcp"], rows["reference@8"]
    every = [m for m in data["methods"] if m["role"] == "control"]
    controls = [m for m in every if m["name"].startswith("ddim@")]
    for sampler, family in (("dpmpp2m", "plain DPM-Solver++ 2M"), ("unipc", "plain UniPC")):  # the same k per sampler
        mine = [m for m in every if m["name"].startswith(sampler + "@")]
        assert [m["steps"] for m in mine] == [m["steps"] for m in controls] and {m["family"] for m in mine} == {family}
    assert "each row's neighbours included" in (out / "bench.md").read_text()
    # the controls are plain DDIM at fewer steps, chosen from the accelerated row's measured speedups
    speedups = [lcp["speedup"], lcp["model_speedup"], 1 / lcp["flops_ratio"]]
    assert [m["steps"] for m in controls] == sorted(bench.control_steps(4, speedups), reverse=True)
    assert controls and all(m["accel"] is None and m["steps"] < 4 and m["key_steps"] == m["steps"] for m in controls)
    assert all(m["family"] == bench.PLAIN for m in controls) and lcp["family"] == "lightningcp"
    assert [m["name"] for m in controls] == [f"ddim@{m['steps']}" for m in controls]
    assert data["meta"]["controls"] == [m["steps"] for m in controls]
    # the longer reference: twice the steps, its own PSNR column reads the cap
    assert ref["role"] == "reference" and ref["steps"] == 8 and ref["psnr_ref"] == CAP and ref["flops_ratio"] == 2.0
    assert base["psnr_ref"] < CAP and lcp["psnr_ref"] < CAP
    # frontier flags agree with the definition on the measured rows
    pts = [(m["speedup"], m["psnr_base"]) for m in data["methods"]]
    assert [m["frontier"] for m in data["methods"]] == bench.frontier_flags(pts)
    assert base["frontier"] is True  # nothing matches its PSNR (the cap)
    md = (out / "bench.md").read_text()
    _, cells = table(md)
    assert {r["frontier"] for r in cells.values()} <= {"yes", "no"}
    assert bench.frontier_sentence(bench.read_json(out / "bench.json").methods) in md
    # stage seconds: whatever the pipeline reports, "total" at least, as a mean per generation
    for m in data["methods"]:
        assert m["stage_seconds"]["total"] == pytest.approx(sum(c["stages"]["total"] for c in m["cases"]) / len(m["cases"]))
        assert m["stage_seconds"]["total"] <= m["seconds"] * 1.01
    assert "Seconds per pipeline stage" in md


def test_frontier_on_hand_made_rows():
    pts = [(1.0, 100.0), (2.0, 35.0), (3.0, 30.0), (2.5, 32.0), (1.5, 34.0), (3.0, 29.0), (None, 30.0), (2.0, 35.0)]
    assert bench.frontier_flags(pts) == [True, True, True, True, False, False, None, True]

    def row(name, family, speed, psnr, role="method"):
        return bench.MethodResult(name, None, 1, 1, speedup=speed, psnr_base=psnr, family=family, role=role)

    rows = [row("baseline", bench.PLAIN, 1.0, 100.0, "baseline"), row("lcp@2", "lightningcp", 1.8, 38.0),
            row("ddim@5", bench.PLAIN, 2.5, 35.0, "control"), row("ddim@4", bench.PLAIN, 3.0, 33.0, "control"),
            row("lcp@4", "lightningcp", 2.9, 30.0), row("reference@30", bench.PLAIN, 0.5, 36.0, "reference")]
    bench.mark_frontier(rows)
    assert [r.frontier for r in rows] == [True, True, True, True, False, False]
    sentence = bench.frontier_sentence(rows)
    assert sentence.startswith("Frontier: plain DDIM owns most of it (2 of the 3") and "lightningcp 1" in sentence
    rows[1].speedup = 0.9  # lcp@2 slower than the baseline: only plain DDIM rows remain on the fast part
    bench.mark_frontier(rows)
    assert bench.frontier_sentence(rows).startswith("Frontier: plain DDIM owns it")
    rows[3].speedup, rows[3].psnr_base = 2.8, 29.0  # ddim@4 now slower and worse than lcp@4: one row each
    bench.mark_frontier(rows)
    assert [r.frontier for r in rows] == [True, False, True, False, True, False]
    assert bench.frontier_sentence(rows).startswith("Frontier: shared, no family owns it (of the 2")


def test_control_steps_span_the_measured_speedups():
    assert bench.control_steps(15, [1.8, 3.4]) == [4, 5, 6, 7, 8, 9]  # 15/4 = 3.75 >= 3.4, 15/9 = 1.67 <= 1.8
    # the neighbours of every speedup stay (15/3.4 = 4.4: 4 and 5; 15/1.8 = 8.3: 8 and 9), even past most
    assert bench.control_steps(15, [1.8, 3.4], most=3) == [4, 5, 8, 9]
    # a wide span: the ends, every speedup's neighbours, then evenly spread up to most
    wide = bench.control_steps(15, [1.2, 2.5, 5.1], most=6)
    assert wide[0] == 2 and wide[-1] == 13 and {2, 3, 6, 12, 13} <= set(wide) and len(wide) == 6  # 15/5.1, 15/2.5, 15/1.2
    assert bench.control_steps(4, [1.2]) == [3] and bench.control_steps(4, [40.0]) == [1]
    assert bench.control_steps(15, []) == [] and bench.control_steps(1, [2.0]) == []
    m = bench.control_method(5)
    assert m.steps == 5 and m.is_plain and not m.is_baseline and m.family == bench.PLAIN
    assert bench.reference_method(15).steps == 30


def test_plot_draws_the_frontier_line(tmp_path):
    def row(name, speed, psnr):
        return bench.MethodResult(name, None, 1, 1, speedup=speed, psnr_base=psnr)

    res = bench.BenchResult("t", "pipeline", {"model": "tiny"}, [row("baseline", 1.0, 100.0), row("a", 2.0, 35.0),
                                                                   row("b", 3.0, 30.0), row("c", 1.5, 31.0)])
    bench.mark_frontier(res.methods)
    assert [m.frontier for m in res.methods] == [True, True, True, False]
    with Image.open(bench.plot_png(res, tmp_path / "with.png")) as img:
        drawn = np.asarray(img.convert("RGB")).astype(int)
    for m in res.methods:
        m.frontier = False
    with Image.open(bench.plot_png(res, tmp_path / "without.png")) as img:
        plain = np.asarray(img.convert("RGB")).astype(int)
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    assert changed.sum() > 200  # the line (and its note) is drawn only when rows are on the frontier


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")


def test_every_step_a_key_step_is_identical_and_ground_truth_fills_the_columns(pipe, tmp_path):
    image = load_image(bench.EXAMPLE_PORTRAIT)
    t = np.arange(int(0.16 * 16000)) / 16000  # exactly one 4-frame clip at 25 fps
    audio = Audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, 16000, 1)
    truth = torch.rand((4, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    seen = []

    def lipsync(frames):
        seen.append(frames.shape)
        return float(frames.mean())

    case = bench.BenchCase("fake", image, audio, ground_truth=truth, lipsync_fn=lipsync)
    every = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=1)))
    methods = [bench.BenchMethod("lightningcp-all-keys", every), bench.BenchMethod("baseline")]  # baseline moved first
    res = bench.run_bench(pipe, [case], methods, GenerateOptions(steps=3), warmup=False, controls=None, reference=0)
    assert [m.name for m in res.methods] == ["baseline", "lightningcp-all-keys"]
    assert any("the k given by --controls" in n for n in res.notes)  # not chosen automatically
    base, same = res.methods
    assert base.speedup == 1.0
    assert same.psnr_base == CAP and same.ssim_base == pytest.approx(1.0)
    assert same.flops_ratio == pytest.approx(1.0, abs=1e-12) and same.key_steps == 3
    for m in res.methods:
        assert 0 < m.psnr_gt < CAP and -1 <= m.ssim_gt <= 1 and m.l1_gt > 0 and m.lipsync is not None
    assert seen and all(s == (4, 3, 64, 64) for s in seen)
    md = bench.to_markdown(res)
    _, rows = table(md)
    for row in rows.values():
        assert all(row[c] != "n/a" for c in GT_COLUMNS)
    paths = bench.write_outputs(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["methods"][1]["psnr_base"] == CAP and data["methods"][0]["l1_gt"] > 0


class _Clock:
    """A stand-in for the ``time`` module whose ``perf_counter`` only moves when told."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class _ClipEvents:
    """A pipeline whose generation takes known (fake) times: 1 s of preparation, then 3 clips of
    4 frames, 2 s each, then 0.5 s to finish (7.5 s in all, the first frame at 3 s)."""

    device = torch.device("cpu")
    dtype = torch.float32
    source = "fake"

    def __init__(self, clock: _Clock):
        self.clock = clock
        self.cfg = type("Cfg", (), {"name": "fake", "clip_frames": 4, "image_size": 8})()

    def resolve(self, options=None):
        return options

    def generate(self, image, audio, output, opts, *, size=None, accelerator=None, on_clip=None, regions=None):
        self.clock.now += 1.0
        for _ in range(3):
            self.clock.now += 2.0
            if on_clip is not None:
                on_clip(torch.zeros(4, 3, 8, 8))
        self.clock.now += 0.5
        return type("Result", (), {"clips": 3, "seconds": {"total": 7.5}})()


def test_first_frame_is_timed_at_the_first_clip_and_rtf_is_video_over_wall(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", clock)
    case = bench.BenchCase("events", Image.new("RGB", (8, 8)), Audio(np.zeros(8000, np.float32), 16000, 16000, 1))
    res = bench.run_bench(_ClipEvents(clock), [case], [bench.BenchMethod("baseline")], GenerateOptions(steps=2, fps=25),
                          warmup=False, count_flops=False, controls=None, reference=0, repeats=3)
    (base,) = res.methods
    (cr,) = base.cases
    assert cr.all_seconds == [7.5, 7.5, 7.5] and cr.first_frame_seconds == 3.0
    assert cr.video_seconds == 12 / 25 and cr.realtime_factor == pytest.approx(12 / 25 / 7.5)
    assert base.first_frame_seconds == 3.0 and base.realtime_factor == pytest.approx(12 / 25 / 7.5)
    _, rows = table(bench.to_markdown(res))
    assert rows["baseline"]["first frame s"] == "3.000" and rows["baseline"]["RTF"] == "0.064x"
    assert any(n.startswith("first frame s: wall seconds from the call to generate()") for n in res.notes)


def test_results_written_before_the_latency_columns_still_read(tmp_path):
    res = bench.BenchResult("t", "pipeline", {"model": "tiny"}, [bench.MethodResult("baseline", None, 4, 4, seconds=2.0)])
    data = res.to_dict()
    for key in ("first_frame_seconds", "video_seconds", "realtime_factor"):
        del data["methods"][0][key]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = bench.read_json(tmp_path / "old.json")
    assert old.methods[0].first_frame_seconds is None and old.methods[0].realtime_factor is None
    _, rows = table(bench.to_markdown(old))
    assert rows["baseline"]["first frame s"] == "n/a" and rows["baseline"]["RTF"] == "n/a"


def test_flop_memo_counts_what_a_full_count_counts():
    net = bench.build_random_net("tiny", "cpu", torch.float32)
    setup = bench.speed_setup(net, frames=4, size=64)
    m = bench.BenchMethod("lcp", AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3))))
    acc = m.build().attach(net)
    try:
        acc.count_flops = True
        bench.run_denoise(setup, acc, 8)
        full = acc.summary()["flops"]
        acc.count_flops = False
        with bench.FlopMemo(acc) as memo:
            bench.run_denoise(setup, acc, 8)
        assert acc.summary()["flops"] == full and memo.counted_calls == 3  # full, batch of 2, batch of 1
        assert "stage_plan" not in acc.__dict__ and not acc.count_flops  # unwrapped again
    finally:
        acc.detach()


def test_speed_bench_adds_the_controls():
    net = bench.build_random_net("tiny", "cpu", torch.float32)
    setup = bench.speed_setup(net, frames=4, size=64)
    lcp = bench.BenchMethod("lcp@2", AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2))))
    res = bench.run_speed_bench("tiny", "cpu", torch.float32, steps=4, methods=[lcp], setup=setup, warmup=False,
                                controls="auto")
    base, got = res.methods[0], res.methods[1]
    controls = [m for m in res.methods if m.role == "control" and m.name.startswith("ddim@")]
    spans = [got.speedup, got.model_speedup, 1 / got.flops_ratio]
    assert [m.steps for m in controls] == sorted(bench.control_steps(4, spans), reverse=True) and controls
    assert all(m.flops_ratio == pytest.approx(m.steps / 4) for m in controls)  # plain DDIM: FLOPs ~ steps
    assert res.meta["controls"] == [m.steps for m in controls] and base.role == "baseline"
    assert all(m.frontier is None for m in res.methods)  # speed mode: no quality, no frontier
    for m in res.methods:  # one clip, no VAE: the first frame comes at the end; 4 frames at the tiny (Hallo) 25 fps
        assert m.first_frame_seconds == m.seconds and m.realtime_factor == pytest.approx(4 / 25 / m.seconds)
    fixed = bench.run_speed_bench("tiny", "cpu", torch.float32, steps=4, methods=[], setup=setup, warmup=False,
                                  count_flops=False, controls=[2])
    assert [m.name for m in fixed.methods] == ["baseline", "ddim@2", "dpmpp2m@2", "unipc@2"]
    assert fixed.methods[1].steps == 2 and fixed.methods[3].family == "plain UniPC"


def test_cpu_attention_flops_are_counted():
    from talkfast.sampling.loop import flop_counter

    q = torch.randn(1, 2, 16, 8)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * 2 * 16 * 16 * 8


def test_summary_flops_include_attention():
    """The accelerator's own summary() counts attention on CPU: its FLOPs exceed what the
    convolutions and linear layers alone account for."""
    from torch.utils.flop_counter import FlopCounterMode

    net = bench.build_random_net("tiny", "cpu", torch.float32)
    setup = bench.speed_setup(net, frames=4, size=64)
    acc = bench.BenchMethod("off", AccelConfig("off")).build().attach(net)
    try:
        acc.count_flops = True
        bench.run_denoise(setup, acc, 1)
        counted = acc.summary()["flops"]
        with FlopCounterMode(display=False) as plain:  # torch's registry alone
            bench.run_denoise(setup, acc, 1)
        assert counted > plain.get_total_flops() > 0
    finally:
        acc.detach()


def test_metrics():
    a = torch.rand((3, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    assert metrics.psnr(a, a) == CAP and metrics.ssim(a, a) == pytest.approx(1.0)
    b = (a + 0.1).clamp(0, 1)
    c = a.clone()
    c[0] += 0.05  # one frame differs: the identical frames count as CAP each
    assert 10 < metrics.psnr(a, b) < 40 and metrics.ssim(a, b) < 1
    per = metrics.psnr_per_frame(a, c.clamp(0, 1))
    assert per[1] == CAP and per[2] == CAP and per[0] < CAP
    zero, half = torch.zeros(2, 3, 16, 16), torch.full((2, 3, 16, 16), 0.5)
    assert metrics.psnr(zero, half) == pytest.approx(10 * np.log10(1 / 0.25))
    assert metrics.l1(zero, half) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.psnr(zero, half[:1])
    with metrics.PeakMemory("cpu") as pm:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        del x
    assert pm.reading.growth_mb > 48 and pm.reading.peak_mb >= pm.reading.growth_mb


def test_clip_boundary_ratio():
    """A ramp changes by 0.01 per frame; a jump of 0.05 at every 4th step is a boundary 5x the
    change inside the clips, and the ramp alone reads 1."""
    ramp = torch.arange(12, dtype=torch.float32)[:, None, None, None].expand(12, 3, 8, 8) * 0.01
    smooth = metrics.clip_boundary_ratio(ramp, 4)
    assert smooth["ratio"] == pytest.approx(1.0) and smooth["within"] == pytest.approx(0.01)
    jumps = ramp + 0.04 * (torch.arange(12) // 4).float()[:, None, None, None]
    out = metrics.clip_boundary_ratio(jumps, 4)
    assert out["boundary"] == pytest.approx(0.05) and out["ratio"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="no clip boundary"):
        metrics.clip_boundary_ratio(ramp[:4], 4)


def test_method_sets():
    keys = KeySchedule("uniform", interval=5)
    d = bench.default_methods(keys)
    assert [m.name for m in d] == ["baseline", "lightningcp", "lightningcp+forecast", "lightningcp+dfa",
                                   "lightningcp+dfa+refdrop", "lightningcp-noest", "deepcache", "fasterdiffusion"]
    assert all(m.accel.caching.keys == keys for m in d[1:])
    assert [m.accel.method for m in d[-2:]] == ["deepcache", "fasterdiffusion"]
    a = bench.ablation_methods(keys)
    assert sum(not m.is_baseline and not m.accel.caching.estimation for m in a) == 3
    s = bench.sweep_methods((2, 4))
    assert [m.name for m in s] == ["baseline", "lightningcp@2", "lightningcp@4"]
    assert [m.key_steps(8) for m in s] == [8, 4, 2]
    names = [m.name for m in bench.method_set("all", keys, (2, 3))]
    assert len(names) == len(set(names)) and names[0] == "baseline"


def test_embedded_target_without_weights_says_what_to_do(tmp_path, capsys, monkeypatch):
    """A damaged install (no embedded weights) ends with a hint, not a traceback."""
    from talkfast.models import loading

    monkeypatch.setattr(loading, "EMBEDDED_DIR", tmp_path / "no_model")
    assert cli_main(["bench", "--out", str(tmp_path)]) == 4
    assert "--random-weights" in capsys.readouterr().err
    assert not (tmp_path / "bench.md").exists()


def test_gpu_bench_dry_run_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--preset", "tiny",
                           "--device", "cpu", "--steps", "4", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check: LightningCP with every step a key step" in proc.stdout and "-> ok" in proc.stdout
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| fasterdiffusion |") for r in table_rows)
    assert table_rows[-1].startswith("| unipc@")  # the fewer-step controls come after the methods
    for name in ("gpu_bench.md", "gpu_bench.json", "gpu_bench.png"):
        assert (tmp_path / name).is_file()
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert data["mode"] == "speed" and data["meta"]["checks_ok"] is True
    _, rows = table((tmp_path / "gpu_bench.md").read_text())
    assert rows["baseline"]["speedup"] == "1.00x" and rows["deepcache"]["PSNR base dB"] == "n/a"


def test_corpus_split_supplies_ground_truth_and_lipsync(tmp_path):
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (needed to build a corpus) is not installed")
    from talkfast.data.corpus import build_corpus

    build_corpus(tmp_path / "corpus", 6, 1, seed=0, size=64, test_fraction=0.34, workers=1)
    every = [c.name for c in bench.corpus_cases(tmp_path / "corpus", "test")]
    assert len(every) == 2 and len({n.split("_")[0] for n in every}) == 2  # two held-out identities
    cases = bench.corpus_cases(tmp_path / "corpus", "test", limit=1)
    assert len(cases) == 1 and cases[0].ground_truth.dtype == torch.uint8 and cases[0].lipsync_fn is not None
    # --offset: the samples after the first K of the same order (a tune's --limit: other identities)
    assert [c.name for c in bench.corpus_cases(tmp_path / "corpus", "test", limit=1, offset=1)] == every[1:]
    with pytest.raises(InputError, match="after the first 2"):
        bench.corpus_cases(tmp_path / "corpus", "test", offset=2)
    with pytest.raises(ValueError, match="--offset"):
        bench.corpus_cases(tmp_path / "corpus", "test", offset=-1)
    out = tmp_path / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["bench", "--quick", "--corpus", str(tmp_path / "corpus"), "--limit", "1", "--seconds", "0.16",
                       "--out", str(out), "-q"])
    assert rc == 0
    _, rows = table(buf.getvalue())
    for row in rows.values():
        assert all(row[c] != "n/a" for c in GT_COLUMNS)
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["cases"] == [cases[0].name] and data["meta"]["frames"] == 4
    assert -1 <= data["methods"][0]["lipsync"] <= 1 and 0 < data["methods"][0]["l1_gt"] < 1


def test_latency_script_summarizes_the_runs_and_judges_the_quarter():
    import importlib.util

    spec = importlib.util.spec_from_file_location("latency", REPO / "benchmarks" / "latency.py")
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    run = {"wall_s": 40.0, "first_frame_s": 8.0, "ratio": 0.2, "pipeline_s": 30.0, "pipeline_first_frame_s": -2.0}
    late = {**run, "first_frame_s": 12.0, "ratio": 0.3}
    never = {**run, "first_frame_s": None, "ratio": None, "pipeline_first_frame_s": None}
    result = {"meta": {"cpus": 2, "python": "3", "extra": [], "repeat": 3, "poll_s": 0.05},
              "summary": {"auto": latency.summarize([run, late, late]), "off": latency.summarize([never])}}
    assert result["summary"]["auto"]["first_frame_s"] == 12.0 and result["summary"]["auto"]["ratio"] == 0.3
    _, rows = table(latency.markdown(result))
    assert rows["auto"]["ratio"] == "0.300" and rows["auto"]["< 25%"] == "no"
    assert rows["off"]["first frame s"] == "n/a" and rows["off"]["< 25%"] == "n/a"
    result["summary"]["auto"] = latency.summarize([run])
    assert table(latency.markdown(result))[1]["auto"]["< 25%"] == "yes"
    frames = latency.decodable_frames(REPO / "no such file.mp4")
    assert frames == 0


def test_latency_scripts_realtime_feed_is_a_streaming_wav_of_the_recording(tmp_path):
    """benchmarks/latency.py --realtime: what it writes to generate's stdin is read by talkfast's
    live reader as the recording's samples, and the last chunk leaves no earlier than the
    recording's duration after the start (a lower bound only)."""
    import importlib.util
    import threading

    from talkfast.io.audio import load_audio, save_wav
    from talkfast.io.live import open_live

    spec = importlib.util.spec_from_file_location("latency", REPO / "benchmarks" / "latency.py")
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    rng = np.random.default_rng(0)
    wav = save_wav(tmp_path / "s.wav", (0.1 * rng.standard_normal(16000 * 3 // 10)).astype(np.float32), 16000)
    r, w = os.pipe()
    writer = os.fdopen(w, "wb")
    t0 = time.perf_counter()
    feeder = threading.Thread(target=latency.feed_realtime, args=(writer, wav))
    feeder.start()
    live = open_live(f"/dev/fd/{r}")
    os.close(r)  # open_live holds its own descriptor
    got = live.complete()
    live.close()
    feeder.join()
    assert time.perf_counter() - t0 >= 0.3
    np.testing.assert_array_equal(got.samples, load_audio(wav).samples)
    result = {"meta": {"cpus": 2, "python": "3", "extra": [], "repeat": 1, "poll_s": 0.05},
              "summary": {latency.row_label("auto", True): latency.summarize(
                  [{"wall_s": 9.0, "first_frame_s": 2.0, "ratio": 2 / 9, "pipeline_s": 8.0,
                    "pipeline_first_frame_s": 1.0}])}}
    assert "| auto, stdin at speech speed |" in latency.markdown(result)
    assert latency.realtime_factor(115, 25, 23.0) == pytest.approx(0.2)
    assert latency.realtime_factor(None, 25, 23.0) is None
