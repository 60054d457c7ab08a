"""MEMO's generation path: portrait + speech -> 30 fps mp4, in chained clips of 16 frames.

What MEMO does (memoavatar/memo at a5aee30: ``inference.py``, ``configs/inference.yaml``,
``memo/pipelines/video_pipeline.py``; echomimic_memo.md §2.3-2.5) and how talkfast runs it — the
clip loop of :meth:`TalkingHeadPipeline.generate`, with the ``memo`` preset's switches:

1. the portrait resized to the model size as a whole (no crop; MEMO: torchvision ``Resize``,
   bilinear) -> VAE latent;
2. per clip of 16 frames: the reference image and 16 past frames (the portrait 16 times for the
   first clip, then the last 16 decoded frames of the previous clip) through the reference net
   (t = 0, the image contexts [uncond; cond] paired in Hallo's interleaved order), then the
   memory motion modules fold the past frames into their long-term memory (emptied before the
   first clip: ``is_new_audio``; see :mod:`talkfast.models.memo_layers`);
3. wav2vec2 features at 30 fps (window of +-2 frames, the frame count padded to a multiple of 16
   with silence) -> ``audio_proj``; the unconditional half gets zero tokens after the projection;
4. emotion [9 (none), c] for the two CFG halves; the denoiser carries the audio stream through
   its joint audio modules;
5. rectified-flow Euler (``FlowMatchEulerDiscreteScheduler`` defaults), 20 steps, CFG 3.5, through
   the one denoising loop; decode, write at 30 fps with the audio.

Input preparation (MEMO's ``preprocess_image`` / ``preprocess_audio`` /
``extract_audio_emotion_labels``; :mod:`.recipes`, :mod:`.preparation`): insightface's embedding
of the original photo from ``misc/face_analysis`` (zeros without a face, as MEMO);
``misc/vocal_separator/Kim_Vocal_2.onnx`` before wav2vec2; wav2vec2 over the whole vocals file
(:mod:`talkfast.audio.wav2vec_file`); emotion2vec_plus_large + ``misc/audio_emotion_classifier``
labels per second of the input, the most frequent per clip (:mod:`talkfast.audio.emotion`);
``--emotion`` replaces the labels with one for the whole video. A step whose model is missing
takes its fallback (zeros / the whole mix / neutral) with one warning; the sidecar says which ran.
``audio_proj`` runs in fp32 (MEMO never moves or casts it), its tokens cast after. Noise is drawn
in fp32 from talkfast's seeded generator, then cast.
"""

from __future__ import annotations

import copy
import warnings

import torch
from PIL import Image

from ..face.detect import detect_face
from ..models.unet import UNetCond
from ..sampling.loop import guided
from .conditioning import Portrait, _portrait
from .generate import TalkingHeadPipeline, half_layout

MEMO_FPS = 30
# emotion2vec+'s nine classes in the order of its labels (the classifier's outputs; 9 = no emotion)
EMOTIONS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
NO_EMOTION = len(EMOTIONS)


def emotion_index(name: str | int) -> int:
    """An emotion class from its name (``EMOTIONS``) or index 0-8."""
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < NO_EMOTION:
        return name
    if isinstance(name, str) and name.strip().lower() in EMOTIONS:
        return EMOTIONS.index(name.strip().lower())
    raise ValueError(f"--emotion must be one of {', '.join(EMOTIONS)}, got {name!r}")


def memo_portrait(image: Image.Image, size: int, cfg, identity: str = "zeros", regions=None) -> Portrait:
    """The whole image resized to ``size`` x ``size`` (MEMO: no crop, the aspect ratio not kept);
    the face regions (sidecar, DFA's foreground) detected on the result, or ``regions`` rescaled."""
    square = image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)
    if regions is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regions = detect_face(square)
    elif image.size != (size, size):
        regions = regions.rescaled((size, size))
    return _portrait(square, regions, size // cfg.vae_scale_factor, cfg.unet.num_levels, cfg.image_embed_dim, identity)


class MemoPipeline(TalkingHeadPipeline):
    """MEMO behind the pipeline interface; ``audio`` is an
    :class:`~talkfast.pipeline.conditioning.AudioConditioner` with wav2vec2 features."""

    sampler = "flow"
    default_fps = MEMO_FPS

    def __init__(self, net, vae, audio, *, device="cpu", dtype=torch.float32, source: str = "",
                 emotion: str | int | None = None, motion_source: str | None = None, prep=None):
        # audio_proj stays in fp32 (a copy taken before the network is cast to ``dtype``)
        self._audioproj32 = None if dtype == torch.float32 else copy.deepcopy(net.audioproj).to(device, torch.float32)
        super().__init__(net, vae, audio, device=device, dtype=dtype, identity="zeros", source=source,
                         motion_source=motion_source)
        self.emotion_given = emotion is not None
        self.emotion = emotion_index(emotion if emotion is not None else "neutral")
        self.prep = prep  # a .preparation.Preparation (MEMO's folder), or None: no identity model

    def sidecar_extras(self) -> dict:
        labelled = self.prep is not None and self.prep.emotion_model is not None and not self.emotion_given
        return {"emotion": "per clip (emotion2vec)" if labelled else EMOTIONS[self.emotion]}  # the sampler: options.sampler

    def portrait(self, image, size: int | None = None, name: str = "portrait", regions=None) -> Portrait:
        """MEMO's ``preprocess_image``: the whole photo resized, and insightface's embedding of the
        original photo as the image context (zeros without the model or a face)."""
        por = memo_portrait(image, self.check_size(size), self.cfg, self.identity, regions)
        if self.prep is not None:
            por.identity, rec = self.prep.identity(image, self.cfg.image_embed_dim)
            por.prep = {"identity": rec}
        return por

    @torch.no_grad()
    def audio_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """``audio_proj`` in fp32 as MEMO runs it (``inference.py`` at a5aee30 never moves
        ``audio_proj`` off the CPU or casts it: fp32 weights and input), the tokens cast to the
        pipeline dtype after."""
        if self._audioproj32 is None:
            return self.net.audioproj(feats[None].float())
        return self._audioproj32(feats[None].float()).to(self.dtype)

    @torch.no_grad()
    def portrait_conditioning(self, por: Portrait) -> dict:
        """The image contexts [uncond, cond] (MEMO: ``image_proj`` of zeros and of the face embedding)."""
        ident = por.identity.to(self.device, self.dtype)
        return {"context": self.net.imageproj(torch.stack([torch.zeros_like(ident), ident]))}

    def live_lookahead(self, fps: int) -> None:
        """The whole input: MEMO's wav2vec2 features (whole-file normalisation, one pass), vocal
        separation and per-clip emotion read the whole file, so a live input is read to its end first."""
        return None

    def prepare_speech(self, audio, fps: float) -> tuple:
        """MEMO's vocal separation and per-clip emotion labels (emotion2vec + its classifier);
        ``--emotion`` (given) replaces the labels, and so does the fallback without the models."""
        if self.prep is None:
            return audio, None, {}
        speech, labels, record = self.prep.speech(audio, "memo", fps, emotion=not self.emotion_given,
                                                  clip_frames=self.cfg.clip_frames)
        if self.emotion_given and "emotion" in record:
            record["emotion"] = {"ran": "given", "label": EMOTIONS[self.emotion]}
        return speech, labels, record

    def make_predictor(self, pc: dict, audio_tokens: torch.Tensor, guidance: float, motion_scale=None,
                       clip: int = 0):
        """predict(latents (n,...), timesteps (n,), plan) over :func:`memo_model`'s halves, with the
        clip's emotion label (MEMO's labels; else the one ``--emotion``)."""
        labels = pc.get("emotions")
        emotion = self.emotion if not labels else labels[min(clip, len(labels) - 1)]
        run = memo_model(self.net, pc["context"], audio_tokens, emotion, guidance > 1.0, self.dtype)
        return guided(run, guidance)


def memo_model(net, context: torch.Tensor, audio_tokens: torch.Tensor, emotion: int, guided_call: bool,
               dtype: torch.dtype):
    """``model_output(latents (n, C, F, h, w), t (n,), plan, halves)`` for MEMO's net: per CFG half
    (0, 1) the image context ``context[half]`` ((2, T, D): [uncond, cond]), the audio tokens (zeros
    for the unconditional half: MEMO zeroes them after the projection) and the emotion
    (:data:`NO_EMOTION` / ``emotion``); raw outputs of the listed halves, half-major."""
    labels = torch.tensor([NO_EMOTION, emotion], device=context.device)
    parts = {0: (context[:1], torch.zeros_like(audio_tokens)), 1: (context[1:], audio_tokens)}

    def model_output(latents: torch.Tensor, t: torch.Tensor, plan, halves: tuple[int, ...] = (0, 1)) -> torch.Tensor:
        n, k = latents.shape[0], len(halves)
        cond = UNetCond(
            context=torch.cat([parts[h][0].expand(n, -1, -1) for h in halves]),
            audio=torch.cat([parts[h][1].expand(n, -1, -1, -1) for h in halves]),
            emotion=torch.cat([labels[h : h + 1].expand(n) for h in halves]),
            layout=half_layout(n, halves, guided_call))
        x, tt = (latents, t) if k == 1 else (torch.cat([latents] * k), torch.cat([t] * k))
        return net.denoise(x.to(dtype), tt, cond, plan)

    return model_output
