"""``talkfast`` command line: ``generate`` and ``doctor``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .. import examples
from ..errors import TalkfastError
from ..pipeline import MOTION_SOURCES
from .. import threads

#: Subcommands that run a model and take --threads N (talkfast.threads).
THREADED_COMMANDS = ("generate", "batch", "bench", "quality", "tune", "demo")

#: The guide each command's --help ends with: a file of the talkfast repository (there is no web copy).
#: tests/test_docs.py checks that every subcommand has one and that the file exists.
GUIDES = {"": "README.md", "generate": "docs/generating.md", "doctor": "docs/generating.md",
          "batch": "docs/batch_and_scaling.md", "tune": "docs/acceleration.md", "bench": "docs/acceleration.md",
          "quality": "docs/embedded_model.md", "data": "docs/embedded_model.md", "train": "docs/embedded_model.md",
          "demo": "docs/demo.md"}


def guide_pointer(command: str = "") -> str:
    """The last line of ``talkfast [command] --help``."""
    return f"Guide: {GUIDES[command]} (in the talkfast repository)"


def _add_guides(parser: argparse.ArgumentParser, sub) -> None:
    """End the help of the program, of every subcommand and of their own subcommands (``data build``,
    ``train vae``, ...) with the guide pointer."""
    parser.epilog = guide_pointer()
    for name, p in sub.choices.items():
        p.epilog = guide_pointer(name)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    nested.epilog = guide_pointer(name)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="portrait + speech -> talking-head mp4")
    p.add_argument("-s", "--source_image", "--source-image", default=str(examples.PORTRAIT),
                   help="portrait image (default: the bundled example)")
    p.add_argument("-a", "--driving_audio", "--driving-audio", default=str(examples.SPEECH),
                   help="speech recording: wav/flac/ogg/mp3/m4a... (default: the bundled example); '-' (a WAV on "
                        "stdin), a named pipe or a WAV still being written: live, each clip starts once its audio "
                        "has arrived")
    p.add_argument("--audio-idle", type=float, default=None, metavar="SECONDS",
                   help="follow a growing audio file: it ends when it has not grown for this long (default 5 for a "
                        "WAV whose header leaves its length open; stdin and pipes end at end of file)")
    p.add_argument("-o", "--output", default="talkfast_out.mp4", help="output .mp4 (a .json sidecar is written beside it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (or .json beside it) that talkfast did not write")
    p.add_argument("--stream", action="store_true",
                   help="watch while it works: OUTPUT.partial.mp4 (talk.mp4 -> talk.partial.mp4) grows clip by clip "
                        "as a fragmented mp4 a player can open at once; at the end the normal mp4 is written at the "
                        "output path and the partial file removed (interrupted: the partial file is kept, playable)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, e.g. 40 for hallo)")
    p.add_argument("--sampler", default=None,
                   help="ddim, dpmpp2m (DPM-Solver++ 2M), unipc (UniPC bh2); MEMO: flow, dpmpp2m, unipc (default: the "
                        "tuned setting's, else the model's own: ddim; flow for MEMO)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 disables)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the model's: 42; 420 for EchoMimic)")
    p.add_argument("--fps", type=int, default=None, help="output frame rate (default: 25; 24 for EchoMimic, 30 for MEMO)")
    p.add_argument("--size", type=int, default=None, help="output side in pixels (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("--checkpoint", default=None,
                   help="model folder: a Hallo pretrained_models folder (hallo/net.pth, sd-vae-ft-mse/, "
                        "wav2vec/wav2vec2-base-960h/), an EchoMimic pretrained_weights folder (denoising_unet.pth, "
                        "motion_module.pth, reference_unet.pth, face_locator.pth, audio_processor/whisper_tiny.pt, "
                        "sd-vae-ft-mse/), a MEMO checkpoint folder (reference_net/, diffusion_net/, image_proj/, "
                        "audio_proj/, sd-vae-ft-mse/, wav2vec2-base-960h/) or a talkfast model folder")
    p.add_argument("--variant", choices=["default", "acc", "pose", "pose_acc"], default=None,
                   help="EchoMimic checkpoints: which released weights and settings (default: 30 steps, CFG 2.5; "
                        "acc: 6 steps, CFG 1)")
    p.add_argument("--pose", default=None,
                   help="EchoMimic --variant pose / pose_acc: the head pose per frame, a folder of EchoMimic's "
                        "landmark files (0.pkl, 1.pkl, ... or .npy), of drawn frames (0.png, ...), or a video of "
                        "drawn frames; at least as many frames as the video")
    p.add_argument("--emotion", default=None,
                   help="MEMO checkpoints: the emotion of the speech, one of angry, disgusted, fearful, happy, "
                        "neutral, other, sad, surprised, unknown, for the whole video (default: MEMO's own labels "
                        "per clip from emotion2vec_plus_large and misc/audio_emotion_classifier where found, "
                        "else neutral)")
    p.add_argument("--prep", action="append", default=None, metavar="STEP=PATH",
                   help="Hallo / EchoMimic / MEMO checkpoints: read a preparation step's model from PATH instead "
                        "of the checkpoint folder, or STEP=none to skip it (its fallback runs); steps: landmarks "
                        "(MediaPipe .task), identity (insightface models folder), vocals (Kim_Vocal_2.onnx), "
                        "emotion (emotion2vec_plus_large folder), face_box (EchoMimic's MTCNN: none only)")
    p.add_argument("--random-weights", action="store_true", help="random weights (a smoke test; the video is noise)")
    p.add_argument("--model", default="small", help="preset for --random-weights: small, tiny")
    p.add_argument("--pose-weight", type=float, default=1.0)
    p.add_argument("--face-weight", type=float, default=1.0)
    p.add_argument("--lip-weight", type=float, default=1.0)
    p.add_argument("--motion-source", choices=MOTION_SOURCES, default=None,
                   help="the next clip's motion frames: the last sampled latents, the decoded frames re-encoded, "
                        "or the portrait (no chaining) (default: what the model folder's model.json names "
                        "- the embedded model: reference -, pixels for hallo checkpoints, else latents)")
    p.add_argument("--compile", choices=["off", "on"], default="off",
                   help="on: run the denoising UNet compiled by torch.compile (inductor); the first run on a machine "
                        "compiles (minutes on a CPU), later runs load the kernels from the cache folder "
                        "(~/.cache/talkfast/inductor, or $TORCHINDUCTOR_CACHE_DIR) (default: off)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.add_argument_group("acceleration (see talkfast.accelerators)")
    a.add_argument("--accel", default="auto",
                   help="auto (= balanced), quality, balanced, fast: the setting 'talkfast tune' measured for this "
                        "model for that quality budget (steps too, unless --steps), else the documented preset with a "
                        "warning; off: no acceleration (default: auto)")
    a.add_argument("--accel-method", default=None, help="lightningcp, deepcache, fasterdiffusion (overrides the preset's)")
    a.add_argument("--key-steps", default=None,
                   help="key steps: N (every N-th), 'dense', 'power:N' (DeepCache's non-uniform schedule), or a list "
                        "'0,1,2,5,9'; '+last' makes the last step a key step too ('3+last')")
    a.add_argument("--cache-branch", type=int, default=None, help="cache point, 0 = shallowest (input of the last up layer)")
    a.add_argument("--chunk", type=int, default=None, help="most steps per batched shallow call (0: whole group)")
    a.add_argument("--no-estimation", action="store_true", help="ablation: non-key steps get the key step's latent")
    a.add_argument("--combine", choices=["chain", "each", "x0"], default=None,
                   help="how the group's predictions are applied: chained from the true latent, each from its own "
                        "estimate, or each prediction's x0 applied to the true latent")
    a.add_argument("--forecast", type=int, choices=[0, 1, 2], default=None,
                   help="reduced steps extrapolate the cached feature from the last 2 (1) or 3 (2) key steps; 0 reuses it")
    a.add_argument("--guidance-reuse", action=argparse.BooleanOptionalAction, default=None,
                   help="reduced steps run the conditional half only and reuse the key step's guidance term")
    a.add_argument("--guidance-every", type=int, default=None,
                   help="with --guidance-reuse: key steps run the unconditional half only at every N-th key step "
                        "(the first always) and reuse its guidance term in between (default 1: every key step)")
    a.add_argument("--pad", action="store_true",
                   help="pad every reduced call to the clip's largest group (one shape: use with a compiled UNet)")
    a.add_argument("--adaptive", type=float, default=None,
                   help="choose key steps online: a key step when the reduced output has changed by this much "
                        "(relative, accumulated) since the last one (0: off)")
    a.add_argument("--dfa", action=argparse.BooleanOptionalAction, default=None, help="decoupled foreground attention")
    a.add_argument("--dfa-temporal", action="store_true", help="DFA also restricts temporal attention")
    a.add_argument("--drop-ref-layers", default=None,
                   help="reference-feature removal: 'default' (the shallow layer), 'none', or keys like up_blocks.3.attentions.2")
    p.add_argument("--parallel", choices=["steps", "cfg", "steps+cfg"], default=None,
                   help="split the model calls over the processes of a torchrun job (docs/SCALING.md)")


def accel_config(args):
    """The preset named by --accel, with every explicit flag applied on top."""
    import dataclasses

    from ..accelerators import DFAConfig, KeySchedule

    from ..accelerators.tuned import model_folder, resolve

    choice = resolve(args.accel, model_folder(getattr(args, "checkpoint", None), getattr(args, "random_weights", False)),
                     getattr(args, "steps", None), getattr(args, "variant", None))
    args.accel_choice = choice  # what --accel resolved to (printed and stored in the sidecar by generate)
    cfg = choice.accel
    caching = cfg.caching
    changes = {}
    if args.key_steps is not None:
        try:
            changes["keys"] = KeySchedule.parse(args.key_steps)
        except ValueError:
            raise ValueError(f"--key-steps must be N (every N-th step), 'dense', 'power:N' or a list of step "
                             f"numbers like 0,1,2,5 (optionally with '+last'); got {args.key_steps!r}") from None
    if args.cache_branch is not None:
        changes["branch"] = args.cache_branch
    if args.chunk is not None:
        changes["chunk"] = args.chunk
    if args.no_estimation:
        changes["estimation"] = False
    if args.combine is not None:
        changes["combine"] = args.combine
    for name in ("forecast", "guidance_reuse", "guidance_every", "adaptive"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if getattr(args, "pad", False):
        changes["pad"] = True
    method = args.accel_method or (cfg.method if cfg.method != "off" or not changes else "lightningcp")
    dfa = cfg.dfa
    if args.dfa is not None:
        dfa = DFAConfig() if args.dfa else None
    if args.dfa_temporal:
        dfa = dataclasses.replace(dfa or DFAConfig(), temporal=True)
    drop, layers = cfg.drop_ref, cfg.drop_ref_layers
    if args.drop_ref_layers is not None:
        v = args.drop_ref_layers.strip()
        drop, layers = (False, None) if v == "none" else (True, None) if v == "default" else (True, tuple(v.split(",")))
    return cfg.replace(method=method, caching=dataclasses.replace(caching, **changes), dfa=dfa,
                       drop_ref=drop, drop_ref_layers=layers)


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from ..accelerators import build_accelerator
    from ..pipeline.generate import GenerateOptions
    from ..pipeline.loader import load_pipeline
    from ..pipeline.recipes import parse_overrides

    accel = accel_config(args)
    par, extra = None, {}
    if args.parallel:  # torchrun: every rank runs the loop, rank 0 alone writes and prints
        from ..parallel.distributed import ParallelRun

        par = ParallelRun.from_env(args.parallel, args.device)
        args.device, args.quiet = par.device, args.quiet or par.rank != 0
    pipe = load_pipeline(args.checkpoint, random_weights=args.random_weights, preset=args.model,
                         device=args.device, dtype=args.dtype, variant=args.variant, emotion=args.emotion,
                         prep=parse_overrides(args.prep))
    choice = args.accel_choice
    if (getattr(pipe, "windowed", False) and args.accel == "auto" and accel == choice.accel
            and choice.source != "tuned"):
        # EchoMimic's windowed path without tuned settings (talkfast tune --checkpoint): no documented
        # preset fits it, so auto is no acceleration
        from ..accelerators.tuned import resolve

        choice = args.accel_choice = resolve("off", None, args.steps)
        accel = choice.accel
    opts = GenerateOptions(steps=args.steps if args.steps is not None else choice.steps, guidance=args.cfg,
                           seed=args.seed, fps=args.fps,  # None: the pipeline's frame rate
                           motion_scale=(args.pose_weight, args.face_weight, args.lip_weight),
                           motion_source=args.motion_source, compile=args.compile,
                           sampler=args.sampler if args.sampler is not None else choice.sampler)
    if pipe.resolve(opts).motion_source != "pixels" and not getattr(pipe, "windowed", False):
        # a core for decoding clip k while clip k+1 samples (not where the next clip needs the pixels)
        threads.leave_core_for_decode(args.threads, pipe.device)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="step", desc="denoising", dynamic_ncols=True)
        bar.total = total  # a live input: the total grows with the clips known so far
        bar.update(done - bar.n)

    if args.audio_idle is not None:
        extra["audio_idle"] = args.audio_idle
    if args.pose is not None:
        if not getattr(pipe, "pose", False):
            raise ValueError("--pose is for EchoMimic checkpoints with --variant pose or pose_acc")
        extra["pose"] = args.pose
    try:
        acc = build_accelerator(accel) if accel.method != "off" else None
        if par is not None:
            extra.update(par.generate_kwargs(pipe))
        extra["extra_sidecar"] = {**extra.get("extra_sidecar", {}), "accel_choice": choice.describe()}
        output = args.output if par is None or par.rank == 0 else None
        if args.stream and output is not None:
            from ..io.stream import partial_path

            extra["growing"] = True
            partial = partial_path(output)
            print(f"streaming: {partial} grows clip by clip (open it in a player); {output} is written at the end",
                  flush=True)
        try:
            result = pipe.generate(args.source_image, args.driving_audio, output, opts, size=args.size,
                                   progress=progress, accelerator=acc, overwrite=args.overwrite, **extra)
        except BaseException:
            if extra.get("growing") and partial.is_file():
                print(f"the video so far is in {partial} (not the output: the run did not finish)", file=sys.stderr)
            raise
    finally:
        if bar is not None:
            bar.close()
        if par is not None:
            par.close()
    if par is not None and par.rank != 0:
        return 0
    secs = result.seconds.get("total", 0.0)
    print(f"wrote {result.path} ({result.frames} frames, {result.clips} clips, {secs:.1f} s)")
    print(choice.text() + ("" if accel == choice.accel else "; with the explicit acceleration options on top"))
    if choice.warning:
        print(choice.warning, file=sys.stderr)
    if acc is not None:
        print(acc.summary_text())
    return 0


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor(args.checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkfast", description="Fast diffusion talking-head generation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    from . import batch as batch_app

    batch_app.add_parser(sub)
    d = sub.add_parser("doctor", help="show what is available (device, ffmpeg, face detector, weights)")
    d.add_argument("--checkpoint", default=None, help="also check this checkpoint folder")
    from ..data import cli as data_cli
    from ..eval import cli as eval_cli
    from ..train import cli as train_cli

    data_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    eval_cli.add_quality_parser(sub)
    from ..eval import tune_cli

    tune_cli.add_parser(sub)
    train_cli.add_parser(sub)
    from . import demo as demo_app

    demo_app.add_parser(sub)
    for name in THREADED_COMMANDS:
        threads.add_argument(sub.choices[name])
    _add_guides(parser, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not threads.torch_loaded():  # OpenMP reads its wait policy once, when torch loads it
        threads.prepare_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in THREADED_COMMANDS:
        threads.apply(args.threads)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    from ..data import cli as data_cli
    from ..eval import cli as eval_cli
    from ..train import cli as train_cli

    handlers = {"generate": cmd_generate, "doctor": cmd_doctor, "data": data_cli.run, "bench": eval_cli.run,
                "quality": eval_cli.run_quality_command,
                "tune": lambda a: a.handler(a),
                "train": train_cli.run}
    from . import batch as batch_app

    handlers["batch"] = batch_app.run
    from . import demo as demo_app

    handlers["demo"] = demo_app.cmd_demo
    previous = _catch_sigterm()
    try:
        return handlers[args.command](args)
    except TalkfastError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:  # option values rejected by the pipeline
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else "MemoryError"
        print(f"error: out of memory ({detail}); use a smaller --size, or a device with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print("interrupted; no output written", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(err, Terminated) else 130
    finally:
        if previous is not _NOT_INSTALLED:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, torch's CPU allocator or CUDA's OutOfMemoryError."""
    text = str(err)
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds (removing its temporaries) as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


_NOT_INSTALLED = object()


def _catch_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
