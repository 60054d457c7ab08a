"""The talking-head pipeline: portrait + speech -> mp4 (Hallo's inference flow, §7).

Clips of ``clip_frames`` frames are generated one after the other, each conditioned on the
reference portrait and on the last ``motion_frames`` decoded frames of the previous clip; every
clip is decoded and streamed to the video writer before the next starts (or, where a core is
free, while the next one samples: :mod:`.publish`), so memory is bounded by two clips whatever the
audio length.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from diffusers import AutoencoderKL

from .. import __version__
from ..accelerators.base import Accelerator
from ..io.live import LiveAudio, read_audio
from ..io.image import load_image, to_uint8
from ..io.stream import check_outputs, open_writer
from ..io.video import VideoWriter, remove_stale_temporaries
from ..models.attention import ItemLayout
from ..models.compiled import compile_denoiser
from ..models.config import PRESETS, ModelConfig
from ..models.net import TalkingHeadNet
from ..models.unet import StagePlan, UNetCond
from ..sampling.loop import StepPlanner, denoise, guided
from ..sampling.scheduler import make_scheduler, sampler_kind, sampler_name
from ..threads import available_cores
from . import MOTION_SOURCES
from .clips import Clip, audio_sample, make_clip, run_to_end
from .conditioning import AudioConditioner, Portrait, prepare_portrait
from .publish import ClipPublisher

log = logging.getLogger(__name__)

# Sampling defaults per model preset: (steps, guidance).
SAMPLING_DEFAULTS = {"hallo": (40, 3.5), "small": (15, 3.5), "tiny": (4, 2.0), "memo": (20, 3.5), "memo_tiny": (4, 3.5)}
# Ranges of the sampling options (GenerateOptions.resolved; the batch manifest's columns too).
DEFAULT_SEED = 42  # Hallo's scripts/inference.py and MEMO's inference.py (EchoMimic: ECHOMIMIC_SEED, 420)
MAX_STEPS = 1000  # the scheduler's training timesteps
MAX_GUIDANCE = 30.0
MOTION_WEIGHTS = (0.0, 10.0)  # --pose-weight, --face-weight, --lip-weight
MAX_SIZE_FACTOR = 2  # --size at most this times the model's own image side


@functools.lru_cache(maxsize=64)
def half_layout(n: int, halves: tuple[int, ...], guided: bool = True) -> ItemLayout:
    """Item layout of ``n`` items of each listed CFG half (0 uncond: no reference tokens, 1 cond)
    of a call that is part of a CFG-guided step (``guided``) or not: a half run on its own still
    reads the frame-tiled reference groups of the whole CFG call. ``(0, 1)`` and ``(1,)`` without
    guidance are ``ItemLayout.cfg(n, True / False)``."""
    if tuple(halves) == (0, 1):
        return ItemLayout.cfg(n, True)
    if tuple(halves) == (1,) and not guided:
        return ItemLayout.cfg(n, False)
    if not guided:
        raise ValueError(f"without guidance a call has the conditional half only, not {halves}")
    return ItemLayout(tuple(h for h in halves for _ in range(n)), tuple(h == 1 for h in halves for _ in range(n)),
                      (0, 1))


@dataclass
class GenerateOptions:
    steps: int | None = None  # None: the preset's default
    guidance: float | None = None
    seed: int | None = None  # None: the family's default (42; EchoMimic 420, set by its pipeline's resolve)
    fps: int | None = None  # None: the pipeline's (25; EchoMimic 24, MEMO 30)
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hallo_context_tiling: bool | None = None  # None: the model's ModelConfig.hallo_chaining (Hallo, MEMO as released)
    # Where the next clip's motion frames come from: "pixels" re-encodes the last decoded frames
    # (Hallo as released), "latents" reuses the last frames' sampled latents and skips the VAE round
    # trip, whose loss compounds from clip to clip with a small autoencoder; "reference" gives every
    # clip the portrait as its motion frames (no chaining: no drift, no continuity from the previous
    # clip). None: what the model folder's model.json names ("motion_source"), else "pixels" for a
    # network trained with pixel chaining (ModelConfig.hallo_chaining: Hallo, MEMO) and "latents"
    # for the others.
    motion_source: str | None = None
    # The sampler (talkfast.sampling.scheduler.SAMPLERS): None is the family's own (DDIM; MEMO: flow),
    # "dpmpp2m" / "unipc" diffusers' multistep solvers in the family's configuration
    sampler: str | None = None
    # "on": the denoising UNet runs compiled by torch.compile (talkfast.models.compiled; compiled
    # once per pipeline, kernels cached on disk); "off": eager
    compile: str = "off"

    def resolved(self, model: ModelConfig | str, motion_source: str | None = None, fps: int = 25) -> "GenerateOptions":
        """Every None filled in: the model's defaults (``model``: its configuration, or a preset's
        name), ``motion_source`` when the model folder names one, ``fps`` (the pipeline's frame
        rate). How clips chain and pair their reference contexts follows the network's
        ``hallo_chaining``, so a renamed configuration keeps its behaviour."""
        def chained() -> bool:  # asked only where the caller left the choice open
            cfg = PRESETS.get(model) if isinstance(model, str) else model
            return bool(cfg is not None and cfg.hallo_chaining)

        steps, guidance = SAMPLING_DEFAULTS.get(model if isinstance(model, str) else model.name, (25, 3.5))
        out = GenerateOptions(**asdict(self))
        out.fps = self.fps if self.fps is not None else fps
        out.steps = self.steps if self.steps is not None else steps
        out.guidance = self.guidance if self.guidance is not None else guidance
        out.seed = self.seed if self.seed is not None else DEFAULT_SEED
        if out.hallo_context_tiling is None:
            out.hallo_context_tiling = chained()
        if out.motion_source is None:
            out.motion_source = motion_source or ("pixels" if chained() else "latents")
        if out.compile not in ("off", "on"):
            raise ValueError(f"--compile must be off or on, not {out.compile!r}")
        if out.motion_source not in MOTION_SOURCES:
            raise ValueError(f"--motion-source must be one of {', '.join(MOTION_SOURCES)}, not {out.motion_source!r}")
        # every number finite and in range (NaN fails every comparison, so test "inside", not "outside")
        if not 1 <= out.steps <= MAX_STEPS:
            raise ValueError(f"--steps must be between 1 and {MAX_STEPS}, got {out.steps}")
        if not (isinstance(out.guidance, (int, float)) and 1.0 <= out.guidance <= MAX_GUIDANCE):
            raise ValueError(f"--cfg must be a number from 1.0 (1.0 disables guidance) to {MAX_GUIDANCE:g}, "
                             f"got {out.guidance!r}")
        if isinstance(out.fps, bool) or not isinstance(out.fps, int) or not 1 <= out.fps <= 120:
            raise ValueError("--fps must be between 1 and 120")
        if isinstance(out.seed, bool) or not isinstance(out.seed, int) or not 0 <= out.seed < 2**63:
            raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1, got {out.seed!r}")
        lo, hi = MOTION_WEIGHTS
        for name, w in zip(("--pose-weight", "--face-weight", "--lip-weight"), out.motion_scale):
            if not (isinstance(w, (int, float)) and lo <= w <= hi):
                raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {w!r}")
        return out


@dataclass
class GenerationResult:
    path: Path | None
    frames: int
    clips: int
    seconds: dict = field(default_factory=dict)
    sidecar: dict = field(default_factory=dict)


class _Run:
    """What :func:`guarded_run` hands to a generation: the writer, once there is one."""

    writer: VideoWriter | None = None


@contextlib.contextmanager
def guarded_run(pipe, accelerator, portrait):
    """One generation's attach/abort/detach frame, shared by the pipelines: attaches
    ``accelerator`` (when it is not attached yet) and begins it; on any exception (Ctrl-C too)
    drops the reference features and aborts the writer (no partial output); always detaches an
    accelerator it attached, so no plug-in processor stays on the network."""
    attached_here = isinstance(accelerator, Accelerator) and accelerator.net is None
    run = _Run()
    try:
        if isinstance(accelerator, Accelerator):
            accelerator.attach(pipe.net)
            accelerator.begin(pipe, portrait)
        yield run
    except BaseException:
        pipe.net.clear_reference()
        if run.writer is not None:
            run.writer.abort()
        raise
    finally:
        if attached_here and accelerator.net is not None:
            accelerator.detach()


def finish_run(pipe, run: _Run, accelerator, sidecar: dict, timings: dict, t0: float) -> None:
    """The end of a generation that went through: timings and the accelerator's summary into the
    sidecar, the video published (the writer's close renames it into place)."""
    pipe.net.clear_reference()
    timings["total"] = time.perf_counter() - t0
    sidecar["seconds"] = timings
    if isinstance(accelerator, Accelerator):
        sidecar["accelerator"] = {"config": accelerator.describe(), "summary": accelerator.summary()}
    if run.writer is not None:
        run.writer.sidecar = dict(sidecar)
        run.writer.close()


class _StageClock:
    """``with clock("decode"): ...`` adds the block's wall seconds to ``timings["decode"]`` (on CUDA
    after a synchronisation, once per stage and clip: never inside the step loop)."""

    def __init__(self, timings: dict, device: torch.device):
        self.timings, self.device = timings, torch.device(device)
        self.cuda = self.device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


DECODE_PIXELS = 8 * 128 * 128  # pixels of the frames one VAE decoder call takes (see TalkingHeadPipeline.decode)


class TalkingHeadPipeline:
    sampler = "ddim"  # the scheduler kind (talkfast.sampling.scheduler.make_scheduler)
    default_fps = 25

    def __init__(self, net: TalkingHeadNet, vae: AutoencoderKL, audio: AudioConditioner, *,
                 device="cpu", dtype=torch.float32, identity: str = "pixels", source: str = "",
                 motion_source: str | None = None):
        self.net = net.to(device=device, dtype=dtype)
        vae = vae.to(device=device)
        self.vae = vae if vae.dtype == dtype else vae.to(dtype=dtype)
        self.audio = audio
        self.device, self.dtype = torch.device(device), dtype
        self.cfg = net.cfg
        self.identity = identity
        self.source = source
        self.motion_source = motion_source  # the model's own default (model.json), or None
        self.vae_scale = float(getattr(vae.config, "scaling_factor", 1.0))
        # None: decode each clip on a worker thread while the next clip samples wherever that can
        # help (decode_in_background); True / False forces it on / off (where it is possible)
        self.background_decode: bool | None = None

    def sidecar_extras(self) -> dict:
        """Model-family settings the sidecar records (none here; MEMO: its emotion and sampler)."""
        return {}

    def input_paths(self) -> list[str]:
        """What the model was read from (its checkpoint folder, a ``--prep`` model file or folder):
        no output may be written onto any of it, even with ``overwrite``
        (:func:`talkfast.io.write_rule.check_writes`)."""
        source = str(self.source or "")
        out = [] if not source or source.startswith("random:") else [source]
        plan = getattr(self, "prep_plan", None) or getattr(getattr(self, "prep", None), "plan", None)
        if plan is not None:
            out += [str(s.path) for s in plan.sources.values() if getattr(s, "path", None) is not None]
        return out

    def decode_in_background(self, opts: "GenerateOptions", clips: int) -> bool:
        """Whether :meth:`generate` decodes clip k while clip k+1 samples (:mod:`.publish`): never
        when the next clip's motion frames come from the decoded pixels, or with one clip; by
        default (``background_decode`` None) on a CPU where torch's intra-op threads leave a core
        of the process's :func:`~talkfast.threads.available_cores` free (``--threads`` below
        the core count)."""
        if opts.motion_source == "pixels" or clips < 2:
            return False
        if self.background_decode is not None:
            return bool(self.background_decode)
        return self.device.type == "cpu" and torch.get_num_threads() < available_cores()

    def resolve(self, options: "GenerateOptions | None" = None) -> "GenerateOptions":
        """``options`` (default: all defaults) completed for this model."""
        opts = (options or GenerateOptions()).resolved(self.cfg, self.motion_source, self.default_fps)
        return self.with_sampler(opts)

    def with_sampler(self, opts: "GenerateOptions") -> "GenerateOptions":
        """``opts`` with its sampler named (None: the family's own, :attr:`sampler`), checked."""
        opts.sampler = sampler_name(sampler_kind(self.sampler, opts.sampler))
        return opts

    def scheduler(self, opts: "GenerateOptions"):
        """The scheduler of resolved ``opts``: its sampler in this family's configuration."""
        return make_scheduler(opts.steps, kind=sampler_kind(self.sampler, opts.sampler))

    # ---------------------------------------------------------------- building blocks
    def check_size(self, size: int | None) -> int:
        """The output side for ``size`` (None: the model's own), checked before any work: a positive
        multiple of the model's downsampling factor and at most :data:`MAX_SIZE_FACTOR` times the
        model's side (memory grows with the square of the side, attention with its fourth power)."""
        if size is None:
            return self.cfg.image_size
        f = self.cfg.vae_scale_factor * 2 ** (self.cfg.unet.num_levels - 1)
        top = MAX_SIZE_FACTOR * self.cfg.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not f <= size <= top or size % f:
            raise ValueError(f"--size must be a multiple of {f} from {f} to {top} for the {self.cfg.name} model "
                             f"(it was trained at {self.cfg.image_size}), got {size!r}")
        return size

    def portrait(self, image, size: int | None = None, name: str = "portrait", regions=None) -> Portrait:
        size = self.check_size(size)
        return prepare_portrait(image, size, size // self.cfg.vae_scale_factor, self.cfg.unet.num_levels,
                                self.cfg.image_embed_dim, self.identity, name, regions)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> latents (N, C, h, w)."""
        x = pixels.to(self.device, self.dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(1, C, F, h, w) latents -> (F, 3, H, W) frames in [0, 1], ``chunk`` frames at a time
        (default: :data:`DECODE_PIXELS` pixels a call: 8 frames at 128x128, 2 at 256x256, 1 at 512x512 —
        Hallo decodes one frame at a time; a batch of small frames keeps the CPU busier: 16
        frames at 128x128 on one thread take 1.10 s in chunks of 8 vs 1.54 s one by one)."""
        z = latents[0].permute(1, 0, 2, 3) / self.vae_scale
        if chunk is None:
            side = z.shape[-1] * self.cfg.vae_scale_factor
            chunk = max(1, DECODE_PIXELS // (side * side))
        out = [self.vae.decode(z[i : i + chunk]).sample for i in range(0, z.shape[0], chunk)]
        # mapped to [0, 1] in the model dtype, then cast, in Hallo's order (decode_latents in
        # hallo/animate/face_animate.py at 8fd7c57); the reverse order rounds twice in fp64
        return (torch.cat(out) / 2 + 0.5).clamp(0, 1).float()

    @torch.no_grad()
    def portrait_conditioning(self, por: Portrait) -> dict:
        """What the portrait contributes to every clip, computed once per generation: the image
        contexts [uncond, cond] (2, T, D), the FaceLocator feature (1, C0, 1, h, w) and the masks."""
        net, dev, dt = self.net, self.device, self.dtype
        ident = por.identity.to(dev, dt)
        return {
            "context": net.imageproj(torch.stack([torch.zeros_like(ident), ident])),
            "face": net.face_locator(por.locator_input.to(dev, dt)[None]).unsqueeze(2),
            "masks": tuple([m.to(dev, dt)[None] for m in kind] for kind in (por.masks.full, por.masks.face, por.masks.lip)),
        }

    def prepare_speech(self, audio, fps: float) -> tuple:
        """``(speech, clip_emotions, record)``: the audio the features read (here the loaded audio
        itself; Hallo and MEMO folders: the separated vocals), per-clip emotion labels (None) and
        the sidecar's record of it (empty: talkfast's own models keep their own preparation)."""
        return audio, None, {}

    def video_frames(self, audio, speech, fps: float) -> int:
        """Frames of the video: the audio's length, ``ceil(samples * fps / rate)`` (Hallo folders
        override it with Hallo's own count)."""
        return audio.num_frames(fps)

    def audio_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """One clip's audio features (F, ...) -> the projected audio tokens (1, F, T, D), in the
        pipeline dtype (Hallo runs ``audioproj`` with the rest of the network)."""
        return self.net.audioproj(feats[None].to(self.dtype))

    def make_predictor(self, pc: dict, audio_tokens: torch.Tensor, guidance: float,
                       motion_scale, clip: int = 0) -> Callable[[torch.Tensor, torch.Tensor, StagePlan | None], torch.Tensor]:
        """predict(latents (n,...), timesteps (n,), plan) -> CFG-combined model output (n,...);
        ``pc`` comes from :meth:`portrait_conditioning`; ``clip``: the clip's index (MEMO's
        per-clip emotion)."""
        net, dt = self.net, self.dtype
        cfg_on = guidance > 1.0
        ctx_u, ctx_c = pc["context"][:1], pc["context"][1:]
        face, masks = pc["face"], pc["masks"]

        # per CFG half (0: unconditional, 1: conditional): image context, audio tokens, face feature
        halves_cond = {0: (ctx_u, torch.zeros_like(audio_tokens), torch.zeros_like(face)), 1: (ctx_c, audio_tokens, face)}

        def model_output(latents: torch.Tensor, t: torch.Tensor, plan: StagePlan | None,
                         halves: tuple[int, ...] = (0, 1)) -> torch.Tensor:
            """Raw (unguided) output of the listed CFG halves for every item, half-major:
            (len(halves) * n, ...). ``(0, 1)`` is the batched CFG call of ``predict``."""
            n, k = latents.shape[0], len(halves)
            parts = [halves_cond[h] for h in halves]
            cond = UNetCond(
                context=torch.cat([c.expand(n, -1, -1) for c, _, _ in parts]),
                audio=torch.cat([a.expand(n, -1, -1, -1) for _, a, _ in parts]),
                masks=tuple([m.expand(k * n, -1) for m in kind] for kind in masks),
                face_feature=torch.cat([f.expand(n, -1, -1, -1, -1) for _, _, f in parts]),
                layout=half_layout(n, halves, cfg_on), motion_scale=motion_scale)
            x, tt = (latents, t) if k == 1 else (torch.cat([latents] * k), torch.cat([t] * k))
            return net.denoise(x.to(dt), tt, cond, plan)

        return guided(model_output, guidance)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        source_image,
        driving_audio,
        output: str | Path | None,
        options: GenerateOptions = GenerateOptions(),
        size: int | None = None,
        accelerator: StepPlanner | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_clip: Callable[[torch.Tensor], None] | None = None,
        extra_sidecar: dict | None = None,
        regions=None,
        wrap_predictor: Callable[[Callable], Callable] | None = None,
        overwrite: bool = False,
        growing: bool = False,
        audio_idle: float | None = None,
    ) -> GenerationResult:
        """Generate the video. ``source_image``/``driving_audio`` are paths (or a PIL image and an
        :class:`Audio`). ``output`` None keeps nothing on disk (frames go to ``on_clip`` only).
        ``progress(done, total)`` is called after every denoising step; ``on_clip(frames)`` with
        each clip's frames in order (on the caller's thread; the decode may run in the background,
        :meth:`decode_in_background`). ``accelerator`` (see
        :mod:`talkfast.accelerators`) is attached to the network if it is not yet (and then detached
        again at the end, so a later call without it runs the plain network), reset for this
        generation, and asked for every step; its ``summary()`` goes into the sidecar. ``regions``:
        known face/lip boxes of a square portrait (the synthetic corpus), instead of detection.
        ``wrap_predictor(predict) -> predict``: applied to every clip's predictor (multi-process
        splitting, :mod:`talkfast.parallel`). ``overwrite`` False: an existing file at ``output`` (or
        its sidecar) that talkfast did not write is an error, not replaced
        (:func:`~talkfast.io.video.check_output_path`). ``growing`` (``generate --stream``): also
        write ``<output stem>.partial.mp4``, a fragmented MP4 a player can open while it grows
        (:mod:`talkfast.io.stream`). ``driving_audio`` may be live (``"-"``: stdin, a named pipe, a
        WAV file still being written, or a :class:`~talkfast.io.live.LiveAudio`): clip k then starts
        as soon as its audio plus :meth:`live_lookahead` has arrived; ``audio_idle``: seconds without
        growth that end a growing file (:mod:`talkfast.io.live`). This is :meth:`stream` run to its end."""
        return run_to_end(self.stream(source_image, driving_audio, options, output=output, size=size,
                                      accelerator=accelerator, progress=progress, extra_sidecar=extra_sidecar,
                                      regions=regions, wrap_predictor=wrap_predictor, overwrite=overwrite,
                                      growing=growing, audio_idle=audio_idle), on_clip)

    def live_lookahead(self, fps: int) -> int | None:
        """Video frames of audio past a clip's end that must have arrived before the clip starts on
        a live input (:mod:`talkfast.io.live`), or None: the whole input (read to its end first).
        Here the conditioner's :meth:`~.conditioning.AudioConditioner.lookahead_frames`: talkfast's
        own models (log-mel) ``radius + 1`` frames, 120 ms at 25 fps, so the latency of a clip is its
        compute; Hallo and MEMO override it (None: their wav2vec2 features and vocal separation
        cover the whole file)."""
        return self.audio.lookahead_frames(fps)

    @torch.no_grad()
    def stream(
        self,
        source_image,
        driving_audio,
        options: GenerateOptions = GenerateOptions(),
        *,
        output: str | Path | None = None,
        size: int | None = None,
        accelerator: StepPlanner | None = None,
        progress: Callable[[int, int], None] | None = None,
        extra_sidecar: dict | None = None,
        regions=None,
        wrap_predictor: Callable[[Callable], Callable] | None = None,
        overwrite: bool = False,
        growing: bool = False,
        audio_idle: float | None = None,
    ) -> Iterator[Clip]:
        """The generation as an iterator of :class:`~.clips.Clip` (frames, their audio span,
        timings), each yielded once decoded (and written, with an ``output``); the arguments are
        :meth:`generate`'s, which runs this same generator to its end (its return value, the
        ``StopIteration`` value, is the :class:`GenerationResult`). Nothing runs before the first
        ``next``; leave early with ``close()`` (or ``contextlib.closing``): the generation is
        aborted as on an error (no output, the accelerator detached). With the decode in the
        background the first clip is still yielded as soon as it is decoded (before the second
        samples: the time to the first frame is one clip's sampling and decode), and a later
        clip k once clip k + 1 has sampled (:mod:`.publish`)."""
        t0 = time.perf_counter()
        opts = self.resolve(options)
        compile_denoiser(self.net, opts.compile == "on")  # once per pipeline; "off" runs it eagerly
        size = self.check_size(size)  # before any input is read
        image = load_image(source_image) if isinstance(source_image, (str, Path)) else source_image
        audio = read_audio(driving_audio, idle=audio_idle) if isinstance(driving_audio, (str, Path)) else driving_audio
        inputs = (source_image, driving_audio, *self.input_paths())
        out_path = check_outputs(output, overwrite=overwrite, inputs=inputs, growing=growing)
        live = isinstance(audio, LiveAudio)
        lookahead = self.live_lookahead(opts.fps) if live else None
        if live and lookahead is None:  # this family's features need the whole input: wait for its end
            audio, live = audio.complete(), False
        if out_path is not None and remove_stale_temporaries(out_path):  # a killed run's (never a running one's)
            log.warning("%s: removed the temporary files of an interrupted run", out_path)
        por = self.portrait(image, size, name=str(source_image) if isinstance(source_image, (str, Path)) else "portrait",
                            regions=regions)
        # live: the length is unknown until the input ends (frames_total, clips None until then)
        speech, clip_emotions, speech_record = (None, None, {}) if live else self.prepare_speech(audio, opts.fps)
        frames_total = None if live else self.video_frames(audio, speech, opts.fps)
        F, M = self.cfg.clip_frames, self.cfg.motion_frames
        clips = None if live else math.ceil(frames_total / F)
        sched = self.scheduler(opts)
        done = 0
        t_prep = time.perf_counter() - t0
        timings = {"prepare": t_prep, "clips": []}
        sidecar = {
            "talkfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "model": self.cfg.name, "weights": self.source, "source_image": str(source_image),
            "driving_audio": str(driving_audio), "audio_seconds": None if live else audio.duration,
            "frames": frames_total, "clips": clips, "size": por.image.size[0], "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""), "face_detected": por.regions.detected,
            "face_box": list(por.regions.face.to_int()), "lip_box": list(por.regions.lip.to_int()),
            "options": asdict(opts), "threads": torch.get_num_threads(), **self.sidecar_extras(),
            **({"preparation": {**por.prep, **speech_record}} if por.prep or speech_record else {}),
            **(extra_sidecar or {}),
        }
        with guarded_run(self, accelerator, por) as run:
            writer = None
            if out_path is not None:
                # an all-black video is an error; --stream: the growing file too, a keyframe per clip
                writer = run.writer = open_writer(out_path, opts.fps, por.image.size, growing=growing, keyframe_every=F,
                                                  inputs=inputs, audio=audio, max_frames=frames_total, sidecar=sidecar,
                                                  reject_blank=True, overwrite=overwrite)
            gen = torch.Generator("cpu").manual_seed(opts.seed)
            stage = _StageClock(timings, self.device)
            with stage("encode"):
                source_latent = self.encode(por.pixels[None])
            motion = source_latent.repeat(M, 1, 1, 1)  # motion latents: the portrait's for the first clip
            h = w = por.image.size[0] // self.cfg.vae_scale_factor
            with stage("prepare"):
                pc = self.portrait_conditioning(por)
            pc["emotions"] = clip_emotions
            # with the portrait as every clip's motion frames the reference features never change:
            # the ReferenceNet runs once per generation instead of once per clip
            fixed_reference = opts.motion_source == "reference"
            memory = bool(self.net.memory_modules())  # MEMO: the past frames update a long-term memory
            ready: collections.deque = collections.deque()  # (index, frames, elapsed): published, not yielded

            def clip(c: int, keep: torch.Tensor, elapsed: float) -> Clip:
                return make_clip(c, keep, c * F, opts.fps, audio, elapsed, timings)

            def publish(latents: torch.Tensor, count: int, c: int) -> torch.Tensor:
                with stage("decode"):
                    frames = self.decode(latents)
                keep = frames[:count]  # the last clip runs past the audio
                with stage("write"):
                    if writer is not None:
                        writer.write(to_uint8(keep))
                ready.append((c, keep, time.perf_counter() - t0))  # made a Clip on the caller's thread
                return frames

            def step_done(_j: int) -> None:
                nonlocal done
                done += 1
                if progress is not None:  # live: the total grows with the clips known so far
                    progress(done, (clips if clips is not None else c + 1) * opts.steps)

            background = self.decode_in_background(opts, 2 if clips is None else clips)
            sidecar["decode_in_background"] = background
            publisher = ClipPublisher(publish, background, timings)
            try:
                c = 0
                while clips is None or c < clips:
                    tc = time.perf_counter()
                    if live:  # block until clip c's audio and its lookahead are here (or the input ended)
                        speech = audio.wait(audio_sample(c * F + F + lookahead, opts.fps, audio.sample_rate))
                        if audio.ended:
                            frames_total = self.video_frames(speech, speech, opts.fps)
                            clips = math.ceil(frames_total / F)
                            sidecar.update(audio_seconds=speech.duration, frames=frames_total, clips=clips)
                            if c >= clips:
                                break
                    if c == 0 or not fixed_reference:
                        with stage("reference"):
                            ref = torch.cat([source_latent, motion])
                            self.net.write_reference(ref, pc["context"], hallo_tiling=opts.hallo_context_tiling)
                    if memory:  # every clip (MEMO: at its step 0), emptied for the first
                        with stage("reference"):
                            self.net.update_motion_memory(reset=c == 0)
                    with stage("audio"):
                        feats = self.audio.clip(speech, c * F, F, fps=opts.fps).to(self.device)
                        tokens = self.audio_tokens(feats)
                    predict = self.make_predictor(pc, tokens, opts.guidance, opts.motion_scale, clip=c)
                    if wrap_predictor is not None:
                        predict = wrap_predictor(predict)
                    noise = torch.randn((1, self.cfg.latent_channels, F, h, w), generator=gen).to(self.device, self.dtype)
                    with stage("denoise"):
                        latents = denoise(predict, sched, noise, accelerator, on_step=step_done)
                    if not fixed_reference:
                        self.net.clear_reference()
                    # live before the end: clip c lies wholly inside the audio (its lookahead is there)
                    frames = publisher.submit(latents, F if frames_total is None else frames_total - c * F, c)
                    if c == 0:  # the first clip as soon as it is decoded, not after the second clip samples
                        publisher.wait()
                    if opts.motion_source == "latents":
                        motion = latents[0, :, -M:].permute(1, 0, 2, 3)
                    elif opts.motion_source == "pixels":  # never in the background (decode_in_background)
                        with stage("encode"):
                            motion = self.encode(frames[-M:].to(torch.float32) * 2 - 1)
                    timings["clips"].append(time.perf_counter() - tc)
                    while ready:  # this clip (inline decode, or the first) or the one before it (background)
                        yield clip(*ready.popleft())
                    c += 1
                publisher.wait()  # the last clip published (its failure raised)
            finally:
                publisher.close()
                if live:
                    audio.close()  # ended (closed already) or the generation stopped early
            while ready:
                yield clip(*ready.popleft())
            finish_run(self, run, accelerator, sidecar, timings, t0)
        return GenerationResult(out_path, frames_total, clips, timings, sidecar)
