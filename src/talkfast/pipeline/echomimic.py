"""EchoMimic v1's generation path: portrait + speech -> 24 fps mp4, over shifting context windows.

What EchoMimic does (antgroup/echomimic at a53e970: ``infer_audio2vid.py`` and
``infer_audio2vid_acc.py`` for the face crop/mask and the settings, ``src/pipelines/
pipeline_echo_mimic.py`` / ``pipeline_echo_mimic_acc.py`` for the loop; echomimic_memo.md §1.3-1.5):

1. whisper-tiny tokens per video frame (:class:`~talkfast.audio.whisper.WhisperStream`), L frames;
2. the face box (facenet-pytorch's MTCNN on the BGR photo, :mod:`talkfast.face.mtcnn`) -> a square
   crop of the portrait (x1.5 box, ``crop_and_pad``) resized with ``cv2.resize`` to the model size,
   and the face mask (box + 10 %) cropped the same way (:func:`echomimic_portrait`)
   -> FaceLocator feature F, broadcast over frames; the unconditional half gets zeros;
3. the reference UNet runs once on the portrait latent with t = 0 and no context; its banks are
   copied to both CFG halves (``TalkingHeadNet.write_reference(..., None)``);
4. noise (1, 4, L, h, w) clamped to +-1.5 (the non-pose pipelines only), then the one denoising
   loop with DDIM (linear betas 0.00085-0.012, v-prediction, zero-SNR, trailing, steps_offset 1,
   eta 0: :func:`~talkfast.sampling.scheduler.make_scheduler`'s defaults) and a
   :class:`~talkfast.sampling.windows.WindowedPredictor` (windows of 12, overlap 3, shift 2 per
   step, 3 for pose): per window one call on [uncond; cond] with audio [zeros; tokens] and face
   [0; F]; 30 steps and CFG 2.5 by default, the ``acc`` variants 6 steps and CFG 1;
5. decode frame by frame, write at 24 fps with the audio.

Memory and long audio (an approximation of EchoMimic, which stops at ``-L`` = 1200 frames): the
video is made in **chunks** of at most ``max_frames`` frames (default 1200, EchoMimic's cap), one
after the other; each chunk is its own closed loop of windows (indices wrap mod the chunk length)
with its own noise from the one generator, and is decoded and written (a few frames at a time)
before the next starts. Audio up to ``max_frames`` frames is therefore EchoMimic's computation;
longer audio has no temporal coupling across a chunk boundary (a visible cut is possible there).

Other differences: the noise is drawn in fp32 from talkfast's seeded CPU generator and then cast
(EchoMimic draws fp16 from ``torch.manual_seed(420)``; the seed default is EchoMimic's 420 here
too); the face box is MTCNN's (:mod:`talkfast.face.mtcnn`), the crop and mask EchoMimic's
(:func:`echomimic_portrait`; a mask box past the top/left edge wraps as EchoMimic's slice does,
with a warning); without guidance the window sums are not divided by the counter in the
default/pose variants, and divided in the acc variants, as EchoMimic's pipelines do
(:mod:`talkfast.sampling.windows`).

Pose variants (``infer_audio2vid_pose.py`` / ``pipeline_echo_mimic_pose.py``): the FaceLocator reads
per-frame face-mesh drawings instead of the face mask (:mod:`talkfast.face.pose`: EchoMimic's
``N.pkl`` landmark files drawn as its FaceMeshVisualizer draws them, or drawn frames), one feature
per frame, gathered at each window's frames (zeros for the unconditional half); the noise is not
clamped and the windows shift by 3 per step. The pose input must cover the video (EchoMimic would
fail on a shorter one); talkfast says so before any work. EchoMimic's pose script caps the video
at 240 frames (``-L``); here the cap is the chunk length, as for the other variants.

Accelerators: the caching methods run on the windowed path through the plan hooks of
:class:`~talkfast.sampling.windows.WindowedPredictor`. A key step's cached deep feature (f_U31 for
branch 0) is kept per absolute frame, averaged over the windows that hold the frame as the model
outputs are, and regathered at the windows of each reduced step
(:class:`~talkfast.accelerators.base.WindowShallowPlan`). The windows shift every step, so a
reduced step's frames get features computed in other temporal contexts (an approximation; with
every step a key step nothing is regathered and the result equals the unaccelerated path). The
per-frame cache holds 2 x L frames of the cached feature (full size, branch 0: 320 x 64 x 64 per
frame, about 5 MB in fp16, so about 6 GB at L = 1200). DFA keeps its key-step attention outputs
per absolute frame the same way (:mod:`talkfast.accelerators.dfa`) with EchoMimic's face mask as
the foreground; reference removal needs nothing of the windows.
"""

from __future__ import annotations

import logging
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..errors import CheckpointError, InputError
from ..face.detect import Box, FaceRegions, detect_face, lip_prior, portrait_prior
from ..face.masks import echomimic_crop, echomimic_face_mask
from ..face.mtcnn import echomimic_face_box, load_mtcnn
from ..face.pose import PoseSequence
from ..io.live import LiveAudio, read_audio
from ..io.image import load_image, to_tensor, to_uint8
from ..io.stream import check_outputs, open_writer
from ..io.video import remove_stale_temporaries
from ..models.compiled import compile_denoiser
from ..models.unet import UNetCond
from ..sampling.loop import StepPlanner, denoise
from ..sampling.windows import WindowedPredictor
from .clips import Clip, make_clip, run_to_end
from .generate import (
    GenerateOptions,
    GenerationResult,
    TalkingHeadPipeline,
    _StageClock,
    finish_run,
    guarded_run,
    half_layout,
)

log = logging.getLogger(__name__)

# (steps, guidance) per EchoMimic variant (infer_audio2vid*.py defaults at a53e970)
ECHOMIMIC_SAMPLING = {"default": (30, 2.5), "acc": (6, 1.0), "pose": (30, 2.5), "pose_acc": (6, 1.0)}
ECHOMIMIC_FPS = 24
WINDOW_FRAMES, WINDOW_OVERLAP = 12, 3  # --context_frames, --context_overlap
NOISE_CLAMP = 1.5
MAX_FRAMES = 1200  # EchoMimic's -L default; here the chunk length
ECHOMIMIC_SEED = 420  # infer_audio2vid*.py --seed default


@dataclass
class EchoPortrait:
    image: Image.Image  # size x size RGB
    pixels: torch.Tensor  # (3, size, size) in [-1, 1]
    mask: torch.Tensor  # (1, size, size) in [0, 1]: the FaceLocator input
    regions: FaceRegions  # as detected on the source image


def _mtcnn_regions(rgb: np.ndarray, detector=None, source: str | None = None) -> FaceRegions:
    """EchoMimic's face box (MTCNN on the BGR array, prob > 0.8, largest, np.round) as FaceRegions;
    without facenet-pytorch: talkfast's Haar detector, with one warning (``detector="haar"``: the
    Haar detector, the plan's fallback already said so)."""
    h, w = rgb.shape[:2]
    try:
        if detector == "haar":
            raise CheckpointError("MTCNN skipped (--prep face_box=none)")
        det = detector if detector is not None else load_mtcnn()
    except CheckpointError as exc:
        if detector != "haar":
            log.warning("portrait: %s; using talkfast's Haar face detector instead (the crop differs from "
                        "EchoMimic's)", exc)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            regions = detect_face(rgb, source=source)
        for c in caught:
            log.warning("portrait: %s", c.message)
        return regions
    box = echomimic_face_box(np.ascontiguousarray(rgb[:, :, ::-1]), det)  # cv2.imread's BGR order
    if box is None:
        log.warning("portrait: no face found in %s; EchoMimic's fallback: the whole photo, an all-ones face mask",
                    source or "the image")
        face = portrait_prior(w, h)
        return FaceRegions(face=face, lip=lip_prior(face), image_size=(w, h), detected=False, method="mtcnn:none")
    face = Box(*box)  # EchoMimic's rounded box, in source pixels (not clipped: the crop clips)
    return FaceRegions(face=face, lip=lip_prior(face).clip(w, h), image_size=(w, h), detected=True,
                       method="mtcnn:facenet-pytorch")


def echomimic_portrait(image: Image.Image, size: int, *, detector=None, source: str | None = None) -> EchoPortrait:
    """EchoMimic's reference image and face mask, both ``size`` x ``size`` (``infer_audio2vid.py``):

    * the face box of :func:`talkfast.face.mtcnn.echomimic_face_box` (facenet-pytorch's MTCNN on the
      BGR array; ``detector`` an :class:`~talkfast.face.mtcnn.MTCNN`, default EchoMimic's);
    * a face: the square of ``crop_and_pad`` resized with ``cv2.resize`` (bilinear,
      :func:`~talkfast.face.masks.echomimic_crop`) and the 0/255 mask cropped and resized the same way
      (:func:`~talkfast.face.masks.echomimic_face_mask` with ``uint8=True``), /255;
    * no face: the whole photo squashed to ``size`` x ``size`` as the pipeline's ``VaeImageProcessor``
      does (PIL Lanczos) and an all-ones mask (EchoMimic's all-255 mask at the photo's size, which
      only fits the latent for a photo of the model size; here it has the model size);
    * a face whose padded mask box starts above or left of the photo gets EchoMimic's wrapped (often
      empty) slice, with a warning (``echomimic_face_mask(wrap=True)``); the Haar fallback's box is
      clipped instead (EchoMimic has no such box).

    Without facenet-pytorch the box is talkfast's Haar detector's (one warning).
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    regions = _mtcnn_regions(rgb, detector, source)
    crop = echomimic_crop(rgb, regions if regions.detected else None, size)
    square = (Image.fromarray(crop) if crop is not None
              else image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    mask = echomimic_face_mask(regions, image.size, size, uint8=True)
    if regions.method.startswith("mtcnn") and regions.detected:  # EchoMimic's own slice, wrapping included
        wrapped = echomimic_face_mask(regions, image.size, size, uint8=True, wrap=True)
        if not torch.equal(wrapped, mask):
            log.warning("portrait: the padded face box of %s starts above or left of the photo; EchoMimic's mask "
                        "slice wraps around there (the face mask is %s), reproduced as EchoMimic does",
                        source or "the image", "empty" if float(wrapped.max()) == 0 else "partly elsewhere")
            mask = wrapped
    return EchoPortrait(square, to_tensor(square), mask, regions)


def window_model(net, tokens: torch.Tensor, face: torch.Tensor, guided: bool, dtype: torch.dtype):
    """``window_output(x (n, C, f, h, w), t (n,), plan, halves, frames (n, f))`` for EchoMimic's net:
    per-frame audio [zeros; tokens[frames]], face feature [0; F], one call on the listed halves.
    ``face`` (1, C0, 1, h, w): the face mask's feature for every frame; (1, C0, L, h, w): a feature
    per frame (the pose variants' drawings), gathered at the window's frames."""
    per_frame = face.shape[2] > 1

    def run(x: torch.Tensor, t: torch.Tensor, plan, halves: tuple[int, ...], frames: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], len(halves)
        idx = frames.to(tokens.device)
        tok = tokens[idx]  # (n, f, T, D)
        zeros = torch.zeros_like(tok)
        feat = (face[0][:, idx].permute(1, 0, 2, 3, 4) if per_frame  # (n, C0, f, h, w)
                else face.expand(n, -1, -1, -1, -1))
        cond = UNetCond(
            audio=torch.cat([tok if h else zeros for h in halves]),
            face_feature=torch.cat([feat if h else torch.zeros_like(feat) for h in halves]),
            layout=half_layout(n, halves, guided))
        xx, tt = (x, t) if k == 1 else (torch.cat([x] * k), torch.cat([t] * k))
        return net.denoise(xx.to(dtype), tt, cond, plan)

    return run


class EchoMimicPipeline(TalkingHeadPipeline):
    """EchoMimic v1 behind the pipeline interface. ``audio`` is a
    :class:`~talkfast.audio.whisper.WhisperFeatures`; ``variant`` one of default, acc, pose, pose_acc."""

    default_fps = ECHOMIMIC_FPS
    windowed = True  # its predictor runs shifting context windows (talkfast.sampling.windows)

    def __init__(self, net, vae, audio, *, variant: str = "default", device="cpu", dtype=torch.float32,
                 source: str = "", max_frames: int = MAX_FRAMES, prep_plan=None):
        if variant not in ECHOMIMIC_SAMPLING:
            raise ValueError(f"unknown EchoMimic variant {variant!r}; choose one of {sorted(ECHOMIMIC_SAMPLING)}")
        super().__init__(net, vae, audio, device=device, dtype=dtype, identity="none", source=source)
        self.variant = variant
        self.pose = variant.startswith("pose")
        self.shift = 3 if self.pose else 2
        self.max_frames = int(max_frames)
        self.prep_plan = prep_plan  # a .recipes.PrepPlan (EchoMimic's folder), or None: MTCNN where installed

    def resolve(self, options: GenerateOptions | None = None) -> GenerateOptions:
        o = options or GenerateOptions()
        steps, guidance = ECHOMIMIC_SAMPLING[self.variant]
        o = replace(o, steps=steps if o.steps is None else o.steps,
                    guidance=guidance if o.guidance is None else o.guidance,
                    seed=ECHOMIMIC_SEED if o.seed is None else o.seed,
                    hallo_context_tiling=False, motion_source="reference")
        return self.with_sampler(o.resolved(self.cfg, fps=self.default_fps))

    def make_window_predictor(self, face: torch.Tensor, tokens: torch.Tensor, guidance: float, timesteps,
                              length: int) -> WindowedPredictor:
        """The step predictor over ``length`` frames; ``face`` (1, C0, 1, h, w), ``tokens`` (length, T, D)."""
        run = window_model(self.net, tokens, face, guidance > 1.0, self.dtype)
        return WindowedPredictor(run, timesteps, length, guidance, size=WINDOW_FRAMES, overlap=WINDOW_OVERLAP,
                                 shift=self.shift, average_unguided=self.variant.endswith("acc"))

    def initial_noise(self, frames: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn((1, self.cfg.latent_channels, frames, h, w), generator=gen)
        if not self.pose:  # pipeline_echo_mimic(_acc).prepare_latents; the pose pipelines do not clamp
            noise = noise.clamp(-NOISE_CLAMP, NOISE_CLAMP)
        return noise.to(self.device, self.dtype)

    @torch.no_grad()
    def generate(self, source_image, driving_audio, output, options: GenerateOptions | None = None,
                 size: int | None = None, accelerator: StepPlanner | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_clip: Callable[[torch.Tensor], None] | None = None, extra_sidecar: dict | None = None,
                 regions=None, wrap_predictor: Callable[[Callable], Callable] | None = None,
                 overwrite: bool = False, pose=None, growing: bool = False,
                 audio_idle: float | None = None) -> GenerationResult:
        """As :meth:`TalkingHeadPipeline.generate`; ``on_clip`` receives each decoded piece of frames.
        ``regions`` is not used (EchoMimic detects the face itself). ``pose`` (the pose variants
        only, and needed there): a :class:`~talkfast.face.pose.PoseSequence` source, a folder of
        per-frame landmark files or drawings, or a video of drawings. This is :meth:`stream` run
        to its end."""
        return run_to_end(self.stream(source_image, driving_audio, options, output=output, size=size,
                                      accelerator=accelerator, progress=progress, extra_sidecar=extra_sidecar,
                                      regions=regions, wrap_predictor=wrap_predictor, overwrite=overwrite,
                                      pose=pose, growing=growing, audio_idle=audio_idle), on_clip)

    def live_lookahead(self, fps: int) -> None:
        """The whole input (see :meth:`stream`): a live input is read to its end before the first clip."""
        return None

    @torch.no_grad()
    def stream(self, source_image, driving_audio, options: GenerateOptions | None = None, *, output=None,
               size: int | None = None, accelerator: StepPlanner | None = None,
               progress: Callable[[int, int], None] | None = None, extra_sidecar: dict | None = None,
               regions=None, wrap_predictor: Callable[[Callable], Callable] | None = None,
               overwrite: bool = False, pose=None, growing: bool = False,
               audio_idle: float | None = None) -> Iterator[Clip]:
        """As :meth:`TalkingHeadPipeline.stream`, over EchoMimic's windows: a frame is final once
        its chunk's last denoising step has run (every step's shifting windows, wrapping around the
        chunk, touch every frame of it), so the clips are the chunk's decoded pieces of
        :data:`WINDOW_FRAMES` frames, yielded after the chunk's last step.

        A live ``driving_audio`` (:mod:`talkfast.io.live`) is read to its end before the first clip:
        EchoMimic's lookahead is the whole input. Its whisper log-mel is clamped at the whole file's
        maximum, and a frame is final only after its chunk's (up to :data:`MAX_FRAMES`) last step,
        whose :data:`WINDOW_FRAMES`-frame windows (overlap :data:`WINDOW_OVERLAP`) wrap around the
        chunk; the windows' own audio context (whisper rows ``c - 4 .. c + 5``: 0.1 s past a frame) and
        30 s encoder segments would be a bound only without that clamp."""
        if self.pose != (pose is not None):
            raise InputError(f"the EchoMimic {self.variant!r} variant needs a pose input (--pose: per-frame landmarks "
                             "or drawings)" if self.pose else
                             f"a pose input is for the pose variants (--variant pose or pose_acc), not {self.variant!r}")
        t0 = time.perf_counter()
        opts = self.resolve(options)
        compile_denoiser(self.net, opts.compile == "on")  # once per pipeline; "off" runs it eagerly
        size = self.check_size(size)
        image = load_image(source_image) if isinstance(source_image, (str, Path)) else source_image
        audio = read_audio(driving_audio, idle=audio_idle) if isinstance(driving_audio, (str, Path)) else driving_audio
        if isinstance(audio, LiveAudio):  # live_lookahead: the whole input
            audio = audio.complete()
        inputs = (source_image, driving_audio, *self.input_paths(), *([pose] if isinstance(pose, (str, Path)) else []))
        out_path = check_outputs(output, overwrite=overwrite, inputs=inputs, growing=growing)
        if out_path is not None and remove_stale_temporaries(out_path):
            log.warning("%s: removed the temporary files of an interrupted run", out_path)
        haar = self.prep_plan is not None and self.prep_plan.path("face_box") is None
        por = echomimic_portrait(image, size, source=str(source_image) if isinstance(source_image, (str, Path)) else None,
                                 detector="haar" if haar else None)
        stream = self.audio.stream(audio)
        frames_total = stream.num_frames(opts.fps)
        poses = None
        if self.pose:
            poses = pose if isinstance(pose, PoseSequence) else PoseSequence(pose, size)
            if len(poses) < frames_total:
                raise InputError(f"the pose input {poses.path} has {len(poses)} frames; {audio.duration:.2f} s of "
                                 f"audio at {opts.fps} fps needs {frames_total} (give more pose frames or a "
                                 "shorter recording)")
        chunk = max(1, self.max_frames)
        starts = list(range(0, frames_total, chunk))
        sched = self.scheduler(opts)
        total_steps, done = len(starts) * opts.steps, 0
        timings = {"prepare": time.perf_counter() - t0, "clips": []}
        sidecar = {
            "talkfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "model": self.cfg.name, "variant": self.variant, "weights": self.source,
            "source_image": str(source_image), "driving_audio": str(driving_audio), "audio_seconds": audio.duration,
            "frames": frames_total, "clips": len(starts), "chunk_frames": chunk, "size": size,
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "face_detected": por.regions.detected, "face_box": list(por.regions.face.to_int()),
            "windows": {"frames": WINDOW_FRAMES, "overlap": WINDOW_OVERLAP, "shift": self.shift},
            "pose": None if poses is None else {"source": str(poses.path), "frames": len(poses)},
            "options": asdict(opts), **(extra_sidecar or {}),
            "preparation": {"face_box": {**(self.prep_plan.record()["face_box"] if self.prep_plan is not None else {}),
                                         "method": por.regions.method, "face_found": por.regions.detected}},
        }
        with guarded_run(self, accelerator, por) as run:
            writer = None
            if out_path is not None:
                writer = run.writer = open_writer(out_path, opts.fps, (size, size), growing=growing,
                                                  keyframe_every=WINDOW_FRAMES, inputs=inputs, audio=audio,
                                                  max_frames=frames_total, sidecar=sidecar, reject_blank=True,
                                                  overwrite=overwrite)
            gen = torch.Generator("cpu").manual_seed(opts.seed)
            stage = _StageClock(timings, self.device)
            h = w = size // self.cfg.vae_scale_factor
            calls = index = 0
            with stage("encode"):
                ref_latent = self.encode(por.pixels[None])
            with stage("reference"):  # once per video (EchoMimic: at step 0)
                self.net.write_reference(ref_latent, None)
            if poses is None:
                with stage("prepare"):
                    face = self.net.face_locator(por.mask.to(self.device, self.dtype)[None]).unsqueeze(2)
            for s in starts:
                tc = time.perf_counter()
                length = min(chunk, frames_total - s)
                if poses is not None:  # the chunk's drawings, one FaceLocator feature per frame
                    with stage("prepare"):
                        drawn = poses.frames(s, length).to(self.device, self.dtype)
                        face = self.net.face_locator(drawn).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C0, L, h, w)
                with stage("audio"):
                    tokens = stream.clip(s, length, opts.fps).to(self.device, self.dtype)
                predict = self.make_window_predictor(face, tokens, opts.guidance, sched.timesteps, length)
                call = predict if wrap_predictor is None else wrap_predictor(predict)
                noise = self.initial_noise(length, h, w, gen)

                def step_done(_j: int) -> None:
                    nonlocal done
                    done += 1
                    if progress is not None:
                        progress(done, total_steps)

                with stage("denoise"):
                    latents = denoise(call, sched, noise, accelerator, on_step=step_done)
                calls += predict.calls
                away = 0.0  # seconds the consumer held the pieces (not the chunk's)
                for a in range(0, length, WINDOW_FRAMES):  # bounded: a few decoded frames at a time
                    with stage("decode"):
                        frames = self.decode(latents[:, :, a : a + WINDOW_FRAMES])
                    with stage("write"):
                        if writer is not None:
                            writer.write(to_uint8(frames))
                    ty = time.perf_counter()
                    yield make_clip(index, frames, s + a, opts.fps, audio, ty - t0, timings)
                    index += 1
                    away += time.perf_counter() - ty
                timings["clips"].append(time.perf_counter() - tc - away)
            sidecar["window_calls"] = calls
            finish_run(self, run, accelerator, sidecar, timings, t0)
        return GenerationResult(out_path, frames_total, len(starts), timings, sidecar)
