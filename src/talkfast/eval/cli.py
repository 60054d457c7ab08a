"""``talkfast bench``: the accelerators against the baseline, in one process.

    talkfast bench [--target embedded|hallo|tiny] [--random-weights | --checkpoint DIR] [--no-tuned]
                   [--methods default|ablation|sweep|all]
                   [--key-steps N|dense|0,1,5] [--sweep 2,3,4,6] [--steps N] [--cfg G] [--seconds S]
                   [--frames F] [--size PX] [--seed N] [--device auto|cpu|cuda] [--dtype auto|fp32|fp16|bf16]
                   [--corpus DIR [--split test|train] [--limit N] [--offset K]] [--controls auto|none|3,5] [--reference 2]
                   [--repeats N] [--no-flops]
                   [--out DIR] [--quick] [-q]

Targets:

- ``embedded``: the embedded default model on the benchmark inputs (quality and CPU speed);
  ``--random-weights`` runs the same (``small``) model with random weights. The inputs are the bundled example portrait and the first ``--seconds`` of the bundled
  speech (default: one clip), or with ``--corpus DIR`` the samples of a synthetic-corpus split
  (default ``test``; ``--limit`` N of them, spread over identities): reference portrait + speech in, ground truth
  (PSNR/SSIM/L1) and the corpus lip-sync metric out (``--seconds`` then trims each sample).
- ``tiny``: the ``tiny`` test model with random weights, same inputs.
- ``hallo``: speed only; the ``hallo`` preset with random weights as a bare denoising loop
  (512x512, 16 frames, 40 steps by default); quality columns are n/a. Meant for a GPU
  (``benchmarks/gpu_bench.py`` is the one-command form).
- ``echomimic`` (``--model echomimic``): the same for EchoMimic v1: its windowed loop (windows of
  12, overlap 3, shift 2; 24 frames, 30 steps, CFG 2.5 by default) with random weights.
- ``memo`` (``--model memo``): the same for MEMO: one 16-frame clip, its memory motion modules
  filled from random past frames, flow-matching Euler, 20 steps, CFG 3.5 by default.
- ``--device meta`` with ``hallo`` / ``echomimic`` / ``memo``: FLOPs only, at full size, on a
  shapes-only copy of the network (no memory, no compute, no timing): the FLOP ratios of every method.

``--checkpoint DIR`` benchmarks a talkfast model folder instead. When the model folder holds
tuned settings (``talkfast tune``), each budget's setting is a row too (``tuned:balanced``, ...;
``--no-tuned`` leaves them out).

Every pipeline comparison also runs plain DDIM at fewer steps (the controls; ``--controls``) and
at twice the steps (the longer reference; ``--reference``), and marks the rows on the
speed/quality frontier.

``--quick`` is the CI form: tiny model, the baseline and LightningCP, 4 steps, key step every 2nd.
Writes ``bench.md``, ``bench.json`` and ``bench.png`` into ``--out`` and prints the markdown
(settings, notes, then the table, last).

Another module wires this into the main CLI: ``add_parser(subparsers)`` then ``run(args)``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CheckpointError, TalkfastError
from ..pipeline import MOTION_SOURCES

QUICK_STEPS = 4
QUICK_KEYS = "2"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object; returns its parser.
    Its ``handler`` default is :func:`run`."""
    p = subparsers.add_parser(
        "bench", help="benchmark the accelerators against the baseline (speed, FLOPs, memory, quality)",
        description="Run the baseline and each accelerator on the same inputs and seed, after a warm-up; "
                    "write bench.md, bench.json and bench.png and print the table.")
    p.add_argument("--target", "--model", dest="target", choices=["embedded", "hallo", "echomimic", "memo", "tiny"],
                   default="embedded",
                   help="embedded: the embedded model (quality + CPU speed); tiny: the test model; "
                        "hallo / echomimic / memo: that preset with random weights, speed only (--device meta: FLOPs "
                        "at full size without computing) (default: embedded)")
    p.add_argument("--random-weights", action="store_true",
                   help="embedded target: the small preset with random weights")
    p.add_argument("--checkpoint", default=None,
                   help="a talkfast model folder instead of the target's model (its tuned settings become rows)")
    p.add_argument("--methods", choices=["default", "ablation", "sweep", "all"], default="default",
                   help="default: baseline, LightningCP (+DFA, +DFA+refdrop, no estimation), DeepCache, "
                        "FasterDiffusion; ablation: LightningCP / +DFA / +DFA+refdrop with and without "
                        "estimation; sweep: LightningCP over --sweep key-step intervals; all: the union")
    p.add_argument("--key-steps", default="4", help="key steps of every method: N (every N-th), 'dense', or '0,1,2,5,9'")
    p.add_argument("--sweep", default="2,3,4,5,6,8", help="key-step intervals of --methods sweep")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's: small 15, tiny 4, hallo 40)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds of the bundled speech to use (default: exactly one clip)")
    p.add_argument("--corpus", default=None, help="a synthetic-corpus folder (talkfast data): benchmark on its --split "
                                                 "with ground truth and lip-sync instead of the bundled example")
    p.add_argument("--split", default="test", choices=["test", "train"], help="corpus split (default: test)")
    p.add_argument("--limit", type=int, default=None, help="at most this many corpus samples, spread over identities")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the first N samples of that order (e.g. a tune's --limit: other identities than it saw)")
    p.add_argument("--frames", type=int, default=None,
                   help="hallo / echomimic / memo target: frames (default: hallo and memo 16, echomimic 24 = three windows)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the model's; hallo 512)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...; meta (hallo / echomimic / memo): FLOPs only")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("--controls", default="auto",
                   help="plain-DDIM fewer-step controls: 'auto' (step counts whose cost ratio spans the accelerated "
                        "rows' measured speedups), 'none', or step counts '3,5,7' (default: auto)")
    p.add_argument("--samplers", default=None,
                   help="also run every accelerated row (tuned rows included) on these samplers, comma-separated "
                        "(dpmpp2m, unipc; named <row>~<sampler>): the same settings on another solver")
    p.add_argument("--no-tuned", action="store_true",
                   help="leave out the rows of the model's tuned settings (talkfast tune; included by default)")
    p.add_argument("--reference", type=int, default=2,
                   help="a longer plain-DDIM reference at this many times the baseline's steps (0: none; default 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (the median is reported)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting pass (FLOPs n/a)")
    p.add_argument("--out", default="bench_out", help="folder for bench.md, bench.json, bench.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --out that talkfast did not write (never an input)")
    p.add_argument("--quick", action="store_true",
                   help=f"CI form: tiny model, baseline + LightningCP, {QUICK_STEPS} steps, key step every {QUICK_KEYS}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines (the table is still printed)")
    p.set_defaults(handler=run)
    return p


def _intervals(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sweep takes comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"--sweep needs intervals >= 1, got {text!r}")
    return vals


def _controls(text: str):
    text = text.strip()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--controls takes auto, none or comma-separated step counts, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"--controls needs step counts >= 1, got {text!r}")
    return vals


def _embedded_pipeline(args):
    from ..models.loading import EMBEDDED_DIR
    from ..pipeline.loader import load_pipeline

    if not (EMBEDDED_DIR / "model.json").exists():
        raise CheckpointError(
            f"the embedded model's weights are not available (no {EMBEDDED_DIR / 'model.json'}); "
            "run 'talkfast bench --random-weights' (the same small model with random weights: speed numbers, "
            "and PSNR/SSIM that measure deviation from the baseline) or '--target tiny'")
    return load_pipeline(None, device=args.device, dtype=args.dtype, seed=args.seed)


def _reported(command, args) -> int:
    """``command(args)``, with talkfast's errors and rejected option values printed as
    ``error: ...`` and turned into the exit code (2 for a bad value)."""
    try:
        return command(args)
    except TalkfastError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _progress_log(quiet: bool):
    """Progress lines on stderr (stdout keeps the report), none when ``quiet``."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return log


def run(args) -> int:
    """Run the benchmark described by ``args`` (from :func:`add_parser`); print the markdown with
    the table last. Returns the exit code (errors print ``error: ...``)."""
    return _reported(_run, args)


def _run(args) -> int:
    from ..accelerators import KeySchedule
    from ..pipeline.loader import load_pipeline, resolve_device, resolve_dtype
    from . import bench

    log = _progress_log(args.quiet)
    target, kind, key_text, steps, seconds = args.target, args.methods, args.key_steps, args.steps, args.seconds
    if args.quick:
        target, kind, key_text = ("tiny" if args.checkpoint is None else target), "quick", QUICK_KEYS
        steps = steps or (QUICK_STEPS if args.checkpoint is None else None)
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if args.reference < 0:
        raise ValueError("--reference must be >= 0 (0: no longer reference)")
    controls = _controls(args.controls)
    from .report import check_outputs

    check_outputs(args.out, inputs=[args.checkpoint, args.corpus], overwrite=args.overwrite)  # before any work
    keys = KeySchedule.parse(key_text)
    methods = bench.method_set(kind, keys, _intervals(args.sweep))
    import torch

    speed_only = target in ("hallo", "echomimic", "memo")
    if args.device == "meta" and not speed_only:
        raise ValueError("--device meta counts FLOPs of a speed-only target (--target hallo, echomimic or memo)")
    device = torch.device("meta") if args.device == "meta" else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, torch.device("cpu") if device.type == "meta" else device)

    if speed_only:
        from ..pipeline.echomimic import ECHOMIMIC_SAMPLING, WINDOW_FRAMES
        from ..pipeline.generate import SAMPLING_DEFAULTS

        if target == "echomimic":
            (d_steps, d_cfg), d_frames = ECHOMIMIC_SAMPLING["default"], 2 * WINDOW_FRAMES
        else:  # hallo, memo: one 16-frame clip
            (d_steps, d_cfg), d_frames = SAMPLING_DEFAULTS[target], 16
        if device.type == "cpu" and args.size is None:
            log(f"warning: the {target} preset at full size on CPU takes minutes per denoising step; this is meant "
                "for a GPU (or --device meta for FLOPs, --size 64 for a reduced size)")
        result = bench.run_speed_bench(
            target, device, dtype, frames=args.frames or d_frames, steps=steps or d_steps, methods=methods,
            size=args.size or 512, guidance=args.cfg if args.cfg is not None else d_cfg, seed=args.seed,
            repeats=args.repeats, count_flops=not args.no_flops, target=target, log=log)
    else:
        from ..pipeline.generate import GenerateOptions

        if args.checkpoint is not None:
            pipe = load_pipeline(args.checkpoint, device=args.device, dtype=args.dtype, seed=args.seed)
            target = "checkpoint"
        elif target == "tiny":
            pipe = load_pipeline(random_weights=True, preset="tiny", device=args.device, dtype=args.dtype, seed=args.seed)
        elif args.random_weights:
            pipe = load_pipeline(random_weights=True, preset="small", device=args.device, dtype=args.dtype, seed=args.seed)
        else:
            pipe = _embedded_pipeline(args)
        opts = GenerateOptions(steps=steps, guidance=args.cfg, seed=args.seed)
        if not args.no_tuned:
            from ..accelerators.tuned import folder_of

            base_steps = pipe.resolve(opts).steps  # a budget whose pick is the baseline itself adds no row
            methods = methods + [m for m in bench.tuned_methods(folder_of(pipe), getattr(pipe, "variant", None))
                                 if not (m.is_plain and m.steps in (None, base_steps))]
        if args.samplers:
            from ..sampling.scheduler import family_samplers

            wanted = [x.strip() for x in args.samplers.split(",") if x.strip()]
            allowed = family_samplers(getattr(pipe, "sampler", "ddim"))
            bad = [x for x in wanted if x not in allowed]
            if bad or not wanted:
                raise ValueError(f"--samplers takes samplers of this model ({', '.join(allowed)}), got {args.samplers!r}")
            methods = methods + bench.on_samplers(methods, wanted)
        if args.corpus is not None:
            cases = bench.corpus_cases(args.corpus, args.split, args.limit, args.offset)
            if seconds is not None:
                for c in cases:
                    c.audio = bench.trim_audio(c.audio, seconds)
            what = f"{len(cases)} {args.split} samples of {args.corpus}" + (f" from the {args.offset + 1}th on" if args.offset else "")
        else:
            if seconds is None:
                seconds = pipe.cfg.clip_frames / pipe.resolve(opts).fps
            cases = [bench.example_case(seconds)]
            what = f"{seconds:g} s of the bundled speech"
        log(f"{target}: model {pipe.cfg.name} ({pipe.source}) on {pipe.device} {str(pipe.dtype).replace('torch.', '')}, "
            f"{len(methods)} methods, {what}")
        result = bench.run_bench(pipe, cases, methods, opts, warmup=True, count_flops=not args.no_flops,
                                 repeats=args.repeats, size=args.size, target=target, log=log,
                                 controls=controls, reference=args.reference)
    paths = bench.write_outputs(result, args.out, checked=True)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    print(bench.to_markdown(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# talkfast quality
# ---------------------------------------------------------------------------------------------

# The corpus the embedded model was trained on (its test split holds the held-out samples); the
# model card records it, these are the values used when it does not.
DEFAULT_CORPUS = {"identities": 200, "sentences": 3, "seed": 0, "size": 128, "test_fraction": 0.2}


def add_quality_parser(subparsers) -> argparse.ArgumentParser:
    """``talkfast quality``: the model's quality report on held-out corpus samples."""
    p = subparsers.add_parser(
        "quality", help="quality report of a model on held-out synthetic samples (PSNR, SSIM, lip sync, identity)",
        description="Generate held-out samples of the synthetic corpus with plain sampling and compare them with "
                    "ground truth; write QUALITY.md, quality.json and contact_sheet.png.")
    p.add_argument("--checkpoint", default=None, help="a talkfast model folder (default: the embedded model)")
    p.add_argument("--random-weights", action="store_true", help="the small preset with random weights (a control)")
    p.add_argument("--corpus", default=None,
                   help="corpus folder; default: build the model's training corpus (from its model card) into "
                        "--corpus-cache, or reuse it there")
    p.add_argument("--corpus-cache", default=None, help="where a default corpus is built (default: ~/.cache/talkfast)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=16, help="samples, spread over identities (default 16)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-shuffled-audio", action="store_true", help="skip the shuffled-audio generations (half the time)")
    p.add_argument("--motion-source", choices=MOTION_SOURCES, default=None,
                   help="motion frames from the sampled latents, the re-encoded frames or the portrait (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="quality_out", help="folder for QUALITY.md, quality.json, contact_sheet.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --out that talkfast did not write (never an input)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(handler=run_quality_command)
    return p


def read_card(path) -> dict:
    """A model folder's ``model.json`` for its training corpus (``talkfast train export --data``
    wrote it): a JSON object whose ``corpus``, when there, fits :data:`CARD_CORPUS`; {} when there
    is no file. Otherwise a :class:`~talkfast.errors.CheckpointError` naming the file and the field."""
    from pathlib import Path

    from ..errors import CheckpointError
    from ..io.records import Anything, Int, Num, Null, Obj, checked, read_json

    if not Path(path).is_file():
        return {}
    spec = Obj({"corpus": Null(Obj({"identities": Int(1, 100_000), "sentences": Int(1, 10_000),
                                    "seed": Int(0, 2**63 - 1), "size": Int(32, 4096),
                                    "test_fraction": Num(0.0, 1.0)})), "preset": Anything()}, extra=True)
    return checked(read_json(path, error=CheckpointError), spec, file=path, error=CheckpointError)


def default_corpus(card: dict, cache: str | None, log) -> str:
    """The model card's training corpus, built once into the cache folder (deterministic by seed)."""
    from pathlib import Path

    from ..data.corpus import build_corpus

    spec = {**DEFAULT_CORPUS, **(card.get("corpus") or {})}
    root = Path(cache) if cache else Path.home() / ".cache" / "talkfast"
    folder = root / "corpus-{identities}x{sentences}-seed{seed}-{size}px-test{test_fraction}".format(**spec)
    if not (folder / "corpus.json").exists():
        log(f"building the corpus {spec} into {folder} (once)")
        build_corpus(folder, spec["identities"], spec["sentences"], seed=spec["seed"], size=spec["size"],
                     test_fraction=spec["test_fraction"], overwrite=True)
    return str(folder)


def run_quality_command(args) -> int:
    return _reported(_run_quality, args)


def _run_quality(args) -> int:
    import shlex
    from pathlib import Path

    from ..models.loading import EMBEDDED_DIR
    from ..pipeline.generate import GenerateOptions
    from ..pipeline.loader import load_pipeline
    from . import quality

    log = _progress_log(args.quiet)
    quality.check_report(args.out, inputs=[args.checkpoint, args.corpus], overwrite=args.overwrite)  # before any work
    pipe = load_pipeline(args.checkpoint, random_weights=args.random_weights, preset="small",
                         device=args.device, dtype=args.dtype, seed=args.seed)
    card_path = Path(args.checkpoint or EMBEDDED_DIR) / "model.json"
    card = read_card(card_path) if not args.random_weights and not args.corpus else {}
    corpus = args.corpus or default_corpus(card, args.corpus_cache, log)
    opts = GenerateOptions(steps=args.steps, guidance=args.cfg, seed=args.seed, motion_source=args.motion_source)
    if pipe.device.type == "cpu":
        import torch

        torch.set_flush_denormal(True)
    result, sheets = quality.run_quality(pipe, corpus, args.split, args.limit, opts,
                                         shuffled_audio=not args.no_shuffled_audio, log=log)
    from ..paths import display_path  # the report prints no absolute machine paths

    words = ["talkfast", "quality", "--out", display_path(args.out), "--limit", str(args.limit)]
    for flag, value in (("--checkpoint", args.checkpoint and display_path(args.checkpoint)),
                        ("--corpus", args.corpus and display_path(args.corpus)), ("--steps", args.steps),
                        ("--cfg", args.cfg), ("--motion-source", args.motion_source)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--random-weights"] * args.random_weights + ["--no-shuffled-audio"] * args.no_shuffled_audio
    if args.split != "test":
        words += ["--split", args.split]
    command = " ".join(shlex.quote(w) for w in words)
    paths = quality.write_report(result, sheets, args.out, command=command, checked=True)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    print(paths["markdown"].read_text(), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m talkfast.eval.cli bench ...``) until the main CLI has it."""
    parser = argparse.ArgumentParser(prog="talkfast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
