"""``talkfast data``: build and inspect the synthetic talking-head corpus.

Wire into the main parser with ``add_parser(subparsers)`` and dispatch ``args.command == "data"``
to ``run(args)``. Sub-commands::

    talkfast data build --out DIR --identities N --sentences M --seed S --size 128 [--test-fraction 0.2]
                        [--workers K] [--preview] [--photo-backgrounds] [--overwrite] [-q]
    talkfast data show DIR              counts per split (samples, identities, sentences, seconds)
    talkfast data lipsync DIR [--split test] [--limit N]
                                        lip-sync metric on ground truth vs mismatched targets
"""

from __future__ import annotations

import argparse
import sys
import time

from talkfast.errors import TalkfastError

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``data`` command (with ``build``, ``show`` and ``lipsync``) to ``subparsers``."""
    p = subparsers.add_parser("data", help="build / inspect the synthetic talking-head corpus",
                              description="Synthetic talking-head corpus (espeak-ng speech + procedural faces).")
    sub = p.add_subparsers(dest="data_command", required=True)
    b = sub.add_parser("build", help="render a corpus (deterministic by --seed)")
    b.add_argument("--out", required=True, help="output folder (new or empty, or an old corpus with --overwrite)")
    b.add_argument("--identities", type=int, default=8, help="number of synthetic people (default 8)")
    b.add_argument("--sentences", type=int, default=6, help="sentences spoken by each person (default 6)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    b.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of identities (and of sentences) held out for the test split (default 0.2)")
    b.add_argument("--workers", type=int, default=None, help="worker processes (default: automatic)")
    b.add_argument("--preview", action="store_true", help="also write preview.mp4 (video + audio) per sample")
    b.add_argument("--photo-backgrounds", action="store_true",
                   help="also use scikit-image's bundled pictures as backgrounds")
    b.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    s = sub.add_parser("show", help="counts per split")
    s.add_argument("dir", help="corpus folder")
    ls = sub.add_parser("lipsync", help="lip-sync score on ground-truth frames vs mismatched targets")
    ls.add_argument("dir", help="corpus folder")
    ls.add_argument("--split", default="test", choices=["train", "test", "all"])
    ls.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    ls.add_argument("--detrend", type=int, default=0, help="moving-average window (frames) removed first; 0: plain r")
    p.set_defaults(data_handler=run)
    return p


def _build(args) -> int:
    from talkfast.data.corpus import build_corpus, corpus_summary

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\r{done}/{total} samples", end="" if done < total else "\n", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    manifest = build_corpus(args.out, args.identities, args.sentences, seed=args.seed, size=args.size,
                            test_fraction=args.test_fraction, workers=args.workers, preview=args.preview,
                            photo_backgrounds=args.photo_backgrounds, overwrite=args.overwrite, progress=progress)
    wall = time.perf_counter() - t0
    summary = corpus_summary(args.out)
    print(f"corpus written to {args.out} in {wall:.1f} s ({len(manifest['samples'])} samples)")
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(f"{'split':<6} {'samples':>8} {'identities':>11} {'sentences':>10} {'seconds':>9}")
    for split, row in summary.items():
        print(f"{split:<6} {row['samples']:>8} {row['identities']:>11} {row['sentences']:>10} {row['seconds']:>9.1f}")


def _show(args) -> int:
    from talkfast.data.corpus import corpus_summary, read_manifest

    manifest = read_manifest(args.dir)
    print(f"{args.dir}: seed {manifest['seed']}, {manifest['size']}x{manifest['size']} px, {manifest['fps']} fps")
    _print_summary(corpus_summary(args.dir))
    return 0


def _lipsync(args) -> int:
    import numpy as np

    from talkfast.data.corpus import load_corpus
    from talkfast.eval.lipsync import mouth_opening, score_series

    samples = load_corpus(args.dir, args.split)
    if args.limit:
        samples = samples[: args.limit]
    if len(samples) < 2:
        print("need at least 2 samples", file=sys.stderr)
        return 2
    measured = [mouth_opening(s.frames(), s.face_boxes()) for s in samples]
    targets = [s.openness for s in samples]
    gt = [score_series(m, t, detrend=args.detrend) for m, t in zip(measured, targets)]
    # mismatched: each clip against the target of the next sample with a different sentence
    mism = []
    for k, m in enumerate(measured):
        for j in range(1, len(samples)):
            other = samples[(k + j) % len(samples)]
            if other.sentence_id != samples[k].sentence_id:
                mism.append(score_series(m, targets[(k + j) % len(samples)], detrend=args.detrend))
                break
    print(f"{len(samples)} samples ({args.split})")
    print(f"ground truth : mean r = {np.mean(gt):.3f} (min {np.min(gt):.3f})")
    if mism:
        print(f"mismatched   : mean r = {np.mean(mism):.3f} (mean |r| {np.mean(np.abs(mism)):.3f})")
    return 0


def run(args) -> int:
    """Run a parsed ``data`` command; returns the exit code (user errors print a message)."""
    handlers = {"build": _build, "show": _show, "lipsync": _lipsync}
    try:
        return handlers[args.data_command](args)
    except TalkfastError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def main(argv: list[str] | None = None) -> int:
    """``python -m talkfast.data.cli data build ...`` without the main CLI."""
    parser = argparse.ArgumentParser(prog="talkfast")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
