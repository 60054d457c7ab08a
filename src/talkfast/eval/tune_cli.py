"""``talkfast tune``: find, per quality budget, the fastest setting for a model and write it into
the model folder (see :mod:`talkfast.eval.tune`).

    talkfast tune [--checkpoint DIR | --random-weights] [--corpus DIR] [--split test] [--limit 8]
                  [--sample IMAGE AUDIO]... [--seconds S [--refine K]] [--space small|full] [--max-settings N]
                  [--steps N] [--cfg G] [--seed N] [--device D] [--dtype T] [--out DIR] [--no-write] [-q]

Samples: the held-out split of the model's training corpus (built once into ``--corpus-cache``,
as ``talkfast quality`` does) or ``--corpus DIR``; or your own ``--sample IMAGE AUDIO`` pairs
(no ground truth or lip-sync metric then). ``--random-weights`` measures speed only (the PSNR
numbers then measure numerical deviation) and writes nothing into any model folder.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import InputError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune", help="measure settings on calibration samples; store the fastest per quality budget in the model folder",
        description="Measure the model's default-step baseline and a search space of step counts x accelerator "
                    "settings; per budget (quality >= 36 dB, balanced >= 33 dB, fast >= 30 dB vs the baseline, lip "
                    "sync >= baseline - 0.02) write the fastest setting that meets it into model.json ('tuned'; "
                    "beside a Hallo, EchoMimic or MEMO checkpoint: talkfast_tuned.json), which --accel "
                    "quality|balanced|fast|auto then uses. Resumable: measured settings are cached in --out.")
    p.add_argument("--checkpoint", default=None,
                   help="a talkfast model folder, or a Hallo / EchoMimic / MEMO checkpoint folder (with --sample or "
                        "--corpus) (default: the embedded model)")
    p.add_argument("--variant", default=None, choices=["default", "acc", "pose", "pose_acc"],
                   help="EchoMimic checkpoints: the variant to tune (each keeps its own tuned settings)")
    p.add_argument("--random-weights", action="store_true", help="the small preset with random weights: speed only, writes nothing")
    p.add_argument("--corpus", default=None, help="corpus folder (default: the model's training corpus, built once)")
    p.add_argument("--corpus-cache", default=None, help="where a default corpus is built (default: ~/.cache/talkfast)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=8, help="corpus samples, spread over identities (default 8)")
    p.add_argument("--sample", nargs=2, action="append", metavar=("IMAGE", "AUDIO"), default=None,
                   help="your own calibration sample (repeatable) instead of the corpus")
    p.add_argument("--seconds", type=float, default=None, help="use only the first S seconds of every sample's speech")
    p.add_argument("--refine", type=int, default=None, metavar="K",
                   help="with --seconds: screen the whole space on the short clips, then measure again, on the "
                        "whole samples, the K fastest settings that reach each budget's floor and the model's current "
                        "picks, and pick from those")
    p.add_argument("--space", choices=["small", "full"], default="small",
                   help="small: <= 48 settings (CPU-feasible); full: a larger grid (default: small)")
    p.add_argument("--max-settings", type=int, default=None, help="measure only the first N settings of the space")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the median is kept; default 1)")
    p.add_argument("--steps", type=int, default=None, help="the baseline's steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="tune_out", help="folder for tune.md, tune.json and the resumable cache")
    p.add_argument("--no-write", action="store_true", help="report only; leave model.json as it is")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --out (and a talkfast_tuned.json that is not a JSON object) that talkfast "
                        "did not write; never an input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from .cli import _reported

    return _reported(_run, args)


def _cases(args, log):
    from . import bench

    if args.sample:
        cases = []
        for i, (image, audio) in enumerate(args.sample):
            for what, path in (("image", image), ("audio", audio)):
                if not Path(path).is_file():
                    raise InputError(f"--sample: the {what} {path} is not a file")
            cases.append(bench.BenchCase(f"{i}:{Path(image).stem}+{Path(audio).stem}", image, audio))
        what = f"{len(cases)} given samples"
    else:
        from ..models.loading import EMBEDDED_DIR
        from .cli import default_corpus, read_card

        corpus = args.corpus
        if corpus is None:
            card_path = Path(args.checkpoint or EMBEDDED_DIR) / "model.json"
            card = read_card(card_path) if not args.random_weights else {}
            corpus = default_corpus(card, args.corpus_cache, log)
        cases = bench.corpus_cases(corpus, args.split, args.limit)
        what = f"{len(cases)} {args.split} samples of {corpus}"
    return cases, what


def _trimmed(cases, seconds: float):
    """Copies of ``cases`` with only the first ``seconds`` of their speech."""
    import dataclasses

    from ..io.audio import load_audio
    from . import bench

    return [dataclasses.replace(c, audio=bench.trim_audio(load_audio(c.audio) if isinstance(c.audio, (str, Path))
                                                          else c.audio, seconds)) for c in cases]


def _command(args) -> str:
    words = ["talkfast", "tune"]
    for flag, value in (("--checkpoint", args.checkpoint), ("--variant", args.variant), ("--corpus", args.corpus),
                        ("--steps", args.steps),
                        ("--cfg", args.cfg), ("--seconds", args.seconds), ("--refine", args.refine),
                        ("--max-settings", args.max_settings),
                        ("--repeats", args.repeats if args.repeats != 1 else None)):
        if value is not None:
            words += [flag, str(value)]
    for image, audio in args.sample or []:
        words += ["--sample", image, audio]
    if not args.sample:
        words += ["--limit", str(args.limit)] + (["--split", args.split] if args.split != "test" else [])
    words += ["--space", args.space, "--out", args.out] + ["--random-weights"] * args.random_weights
    return " ".join(shlex.quote(w) for w in words)


def _current_picks(folder, variant, log) -> list[str]:
    """The names of the model's current tuned settings (finalists of a --refine re-tune), [] when
    it has none; a tuned file that does not read is about to be replaced, so it only warns."""
    from ..accelerators.tuned import tuned_settings
    from ..errors import CheckpointError

    try:
        return [entry["name"] for entry, _ in tuned_settings(folder, variant).values()]
    except CheckpointError as err:
        log(f"warning: the current tuned settings do not read ({err}); none is kept as a finalist")
        return []


def _run(args) -> int:
    from ..accelerators.tuned import model_folder
    from ..pipeline.generate import GenerateOptions
    from ..pipeline.loader import load_pipeline
    from . import tune
    from .tune_space import search_space

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if args.max_settings is not None and args.max_settings < 0:
        raise ValueError("--max-settings must be >= 0")
    if args.refine is not None and (args.refine < 1 or args.seconds is None):
        raise ValueError("--refine K needs K >= 1 and --seconds S (the screening runs on the first S seconds)")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    folder = model_folder(args.checkpoint, args.random_weights)
    if args.checkpoint is not None and folder is None:
        raise InputError(f"--checkpoint {args.checkpoint} is not a folder")
    if (folder is not None and not (folder / "model.json").is_file() and not args.sample
            and args.corpus is None):
        raise InputError(f"{folder} is another project's checkpoint, which has no talkfast corpus: give calibration "
                         "samples with --sample IMAGE AUDIO (repeatable) or --corpus DIR")
    writes = check_tune_writes(args, folder)  # before the corpus, the model and the baseline (nothing written yet)
    cases, what = _cases(args, log)  # every input problem before the model load
    pipe = load_pipeline(args.checkpoint, random_weights=args.random_weights, preset="small",
                         device=args.device, dtype=args.dtype, seed=args.seed, variant=args.variant)
    opts = pipe.resolve(GenerateOptions(steps=args.steps, guidance=args.cfg, seed=args.seed))
    settings = search_space(args.space, opts.steps, getattr(pipe, "sampler", "ddim"))
    if args.max_settings is not None:
        settings = settings[: args.max_settings]
    incumbents = _current_picks(folder, getattr(pipe, "variant", None), log) if args.refine is not None else []
    log(f"tune: model {pipe.cfg.name} ({pipe.source}) on {pipe.device}, baseline {opts.steps} steps, "
        f"{len(settings)} settings ({args.space} space), {what}")
    cache = Path(args.out) / tune.CACHE_NAME
    short = _trimmed(cases, args.seconds) if args.seconds is not None else cases
    result = tune.run_tune(pipe, short, settings, opts, cache_path=cache, progress=not args.quiet,
                           repeats=args.repeats, log=log)
    screening = None
    if args.refine is not None:
        screening = result
        screening.meta["seconds"] = args.seconds
        chosen = tune.refine_candidates(screening, settings, args.refine, keep=incumbents)
        kept = [s.name for s in chosen if s.name in incumbents]
        log(f"refine: {len(chosen)} settings again on the whole samples: {', '.join(s.name for s in chosen)}"
            + (f" (with the model's current picks: {', '.join(kept)})" if kept else ""))
        result = tune.run_tune(pipe, cases, chosen, opts, cache_path=cache, progress=not args.quiet,
                               repeats=args.repeats, log=log)
        result.meta["refine_per_budget"] = args.refine
        result.meta["refine_kept"] = kept
    command = _command(args)
    entries = tune.tuned_entries(result, args.space)
    if args.random_weights:
        result.meta["written"] = None
        log("random weights: speed only; nothing written into a model folder")
    elif args.no_write:
        result.meta["written"] = None
    else:
        from ..paths import display_path

        result.meta["written"] = display_path(tune.write_tuned(folder, entries, getattr(pipe, "variant", None),
                                                               overwrite=args.overwrite))
        log(f"wrote the tuned settings ({', '.join(entries)}) into {result.meta['written']}")
    paths = tune.write_report(result, args.out, command, screening, checked=writes)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    print(paths["markdown"].read_text(), flush=True)
    return 0


def check_tune_writes(args, folder: Path | None) -> list[Path]:
    """The write rule (:func:`talkfast.io.write_rule.check_writes`) for everything tune writes,
    before any work: tune.md, tune.json and the cache in ``--out`` (never an input: the
    checkpoint folder's files, ``--sample`` files, the ``--corpus``; an existing file that is not
    talkfast's tune report or cache only with ``--overwrite``), and the model folder's tuned
    settings file (:func:`talkfast.eval.tune.check_tuned_file`) unless nothing is written there."""
    from ..io.write_rule import check_writes
    from . import tune

    inputs = [folder, args.corpus, *(p for pair in args.sample or [] for p in pair)]
    out = Path(args.out)
    paths = check_writes([out / name for name in tune.REPORT_FILES], inputs=inputs, overwrite=args.overwrite,
                         ours=tune.ours_report, mark="not a talkfast tune report or cache")
    if folder is not None and not args.random_weights and not args.no_write:
        tune.check_tuned_file(folder, args.variant, overwrite=args.overwrite)
    return paths
