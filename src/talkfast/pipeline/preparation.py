"""Running a family's preparation recipe (:mod:`.recipes`) on a user's photo and wav.

:class:`Preparation` opens every model its :class:`~.recipes.PrepPlan` found when it is built (so a
corrupt or wrong file is an error before any work, naming the file), then runs the steps the
family pipelines ask for, each returning what it made and a record for the sidecar (which model
ran, or which fallback and why, and what it found: a face or none). The steps themselves live in
their rooms (:mod:`talkfast.face.landmarker`, :mod:`talkfast.face.hallo_prep`,
:mod:`talkfast.face.identity`, ...); this module only strings them together.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from ..face.detect import detect_face
from ..face.hallo_prep import HalloFacePrep, hallo_face_boxes, hallo_face_prep
from ..io.audio import Audio, save_wav
from .recipes import PrepPlan

log = logging.getLogger(__name__)


def _exif_upright(path: Path) -> bool:
    """Whether ``path`` decodes upright without EXIF rotation (then MediaPipe may decode the file
    itself, as Hallo does, and get the same orientation as talkfast's loader)."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(0x0112, 1) == 1
    except (OSError, ValueError):
        return False


class Preparation:
    """The models of one :class:`PrepPlan`, opened once, and the steps that use them."""

    def __init__(self, plan: PrepPlan, threads: int | None = None):
        self.plan = plan
        self.landmarker = self.identity_model = self.vocal_model = self.emotion_model = None
        if plan.path("landmarks") is not None:
            from ..face.landmarker import FaceLandmarker

            self.landmarker = FaceLandmarker(plan.path("landmarks"))
        if plan.path("identity") is not None:
            from ..face.identity import FaceIdentity

            self.identity_model = FaceIdentity(plan.path("identity"), threads=threads)
        if plan.path("vocals") is not None:
            from ..audio.vocals import MDXModel

            self.vocal_model = MDXModel(plan.path("vocals"), threads=threads)
        if plan.path("emotion") is not None:
            from ..audio.emotion import EmotionLabeller

            self.emotion_model = EmotionLabeller.load(plan.path("emotion"), plan.root)
        plan.warn_fallbacks()

    def _record(self, step: str, **found) -> dict:
        src = self.plan.sources.get(step)
        return {**(src.record() if src is not None else {}), **found}

    def identity(self, image: Image.Image, dim: int) -> tuple[torch.Tensor, dict]:
        """The image-context embedding of the original photo (insightface's largest face, raw
        embedding), or zeros (the originals' no-face value) without the model or a face."""
        if self.identity_model is None:
            return torch.zeros(dim), self._record("identity")
        emb, info = self.identity_model.embed(image)
        if not info.face_found:
            log.warning("identity: %s", info.message)
        if emb.numel() != dim:
            raise ValueError(f"the identity embedding has {emb.numel()} values, the model takes {dim}")
        return emb, self._record("identity", face_found=info.face_found, faces=info.num_faces,
                                 box=None if info.bbox is None else [round(v, 2) for v in info.bbox])

    def hallo_face(self, image: Image.Image, size: int, source: str | None = None) -> tuple[HalloFacePrep, dict]:
        """Hallo's photo preparation: MediaPipe boxes (or the Haar fallback, said out loud) ->
        the squashed photo, FaceLocator input and soft masks (:func:`~talkfast.face.hallo_prep.hallo_face_prep`)."""
        path = Path(source) if source is not None and Path(source).is_file() and _exif_upright(Path(source)) else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boxes = hallo_face_boxes(image, self.landmarker, fallback=detect_face, source=source, path=path)
            prep = hallo_face_prep(image, boxes, size)
        for w in caught:  # without the model the plan's warning (at load) already said so
            if self.landmarker is not None or not str(w.message).startswith("no MediaPipe face landmarker model"):
                log.warning("%s: %s", source or "portrait", w.message)
        return prep, self._record("landmarks", method=boxes.method, face_found=boxes.detected,
                                  face_box=list(boxes.face), lip_box=list(boxes.lip))

    @staticmethod
    def _input_file(audio: Audio, folder: Path) -> Path:
        """The user's audio file as given (the originals read the file itself), or the decoded
        waveform written as a wav when the audio did not come from a readable file."""
        if audio.path is not None and Path(audio.path).is_file():
            return Path(audio.path)
        return save_wav(folder / "input.wav", audio)

    def speech(self, audio: Audio, chain: str, fps: float, emotion: bool = True,
               clip_frames: int = 16) -> tuple[Audio, list[int] | None, dict]:
        """What the audio features read, as ``chain`` ('hallo' / 'memo') prepares it: the vocals
        separated by the folder's MDX-Net model (16 kHz mono), or the loaded mix (fallback); and,
        with MEMO's emotion models (and ``emotion``), one emotion label per clip of ``clip_frames``
        (MEMO: 16) frames (None without them)."""
        record: dict = {}
        with tempfile.TemporaryDirectory(prefix="talkfast-prep-") as tmp:
            folder = Path(tmp)
            src = None
            emotion = emotion and self.emotion_model is not None
            if self.vocal_model is not None or emotion:
                src = self._input_file(audio, folder)
            if self.vocal_model is not None:
                from ..audio.vocals import separate_vocals

                wave = separate_vocals(src, self.vocal_model, chain, folder / "vocals")
                speech = Audio(np.ascontiguousarray(wave, dtype=np.float32), 16000, audio.source_sample_rate,
                               audio.source_channels, audio.path)
            else:
                speech = audio
            if "vocals" in self.plan.sources:
                record["vocals"] = self._record("vocals")
            labels = None
            if emotion:
                labels = self._emotions(src, folder, speech, fps, clip_frames)
                record["emotion"] = self._record("emotion", clip_labels=labels)
            elif "emotion" in self.plan.sources:
                record["emotion"] = self._record("emotion")
        return speech, labels, record

    def _emotions(self, src: Path, folder: Path, speech: Audio, fps: float, clip_frames: int) -> list[int]:
        """MEMO's labels: emotion2vec over the 16 kHz copy of the *input* (``ffmpeg -ar 16000``,
        first channel, int16 as torchaudio reads it), per frame over the padded frame count S' of
        the speech the features read (S = ceil(n / 16000 * fps), up to a multiple of the clip
        length), the most frequent per clip."""
        from ..audio.vocals import input_copy_16k

        copy16 = input_copy_16k(src, folder / "vocals")  # the separator's copy when it ran
        wave, rate = sf.read(str(copy16), dtype="int16", always_2d=True)
        if rate != 16000:
            raise ValueError(f"{copy16}: expected 16 kHz after resampling, got {rate} Hz")
        from ..audio.wav2vec_file import file_frame_counts

        n16 = math.ceil(len(speech.samples) * 16000 / speech.sample_rate)
        padded = file_frame_counts(n16, fps, clip_frames)[1]
        return [int(v) for v in self.emotion_model.clip_labels(wave.T, padded, clip_frames)]
