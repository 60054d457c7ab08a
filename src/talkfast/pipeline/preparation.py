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
import warnings
from pathlib import Path

import torch
from PIL import Image

from ..face.detect import detect_face
from ..face.hallo_prep import HalloFacePrep, hallo_face_boxes, hallo_face_prep
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
        self.landmarker = self.identity_model = None
        if plan.path("landmarks") is not None:
            from ..face.landmarker import FaceLandmarker

            self.landmarker = FaceLandmarker(plan.path("landmarks"))
        if plan.path("identity") is not None:
            from ..face.identity import FaceIdentity

            self.identity_model = FaceIdentity(plan.path("identity"), threads=threads)
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
