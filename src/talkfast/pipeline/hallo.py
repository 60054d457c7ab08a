"""Hallo's generation path with Hallo's own input preparation (hallo 8fd7c57,
``hallo/datasets/image_processor.py``, ``scripts/inference.py``).

The network, sampler and clip chaining are :class:`~.generate.TalkingHeadPipeline`'s with the
``hallo`` preset. The photo goes through Hallo's preparation (:mod:`.preparation`): the whole photo
squashed to the model size (no crop), MediaPipe's face and lip boxes -> FaceLocator input and soft
masks (:mod:`talkfast.face.hallo_prep`), insightface's embedding of the original photo as the image
context (:mod:`talkfast.face.identity`); a step whose model is not in the folder takes its
fallback, named in a warning and in the sidecar (:mod:`.recipes`).
"""

from __future__ import annotations

from .conditioning import Portrait
from .generate import TalkingHeadPipeline
from .preparation import Preparation


class HalloPipeline(TalkingHeadPipeline):
    """A Hallo checkpoint folder behind the pipeline interface, with Hallo's input preparation."""

    def __init__(self, net, vae, audio, *, prep: Preparation, **kwargs):
        super().__init__(net, vae, audio, identity="zeros", **kwargs)
        self.prep = prep

    def portrait(self, image, size: int | None = None, name: str = "portrait", regions=None) -> Portrait:
        """Hallo's ``ImageProcessor.preprocess``: ``regions`` (known raw face/lip boxes of the photo,
        e.g. the synthetic corpus) replace the landmarker and are expanded as Hallo's boxes are."""
        size = self.check_size(size)
        if regions is not None:
            from ..face.hallo_prep import hallo_face_prep

            face = hallo_face_prep(image, regions, size)
            record = {"landmarks": {"ran": "given regions"}}
        else:
            face, rec = self.prep.hallo_face(image, size, source=name)
            record = {"landmarks": rec}
        ident, record["identity"] = self.prep.identity(image, self.cfg.image_embed_dim)
        return Portrait(image=face.image, pixels=face.pixels, regions=face.regions.rescaled((size, size)),
                        masks=face.masks, locator_input=face.locator_input, identity=ident, prep=record)

    def prepare_speech(self, audio, fps: float) -> tuple:
        """Hallo's vocal separation (Kim_Vocal_2 through MDX-Net, then 16 kHz) before wav2vec2."""
        return self.prep.speech(audio, "hallo", fps)

    def live_lookahead(self, fps: int) -> None:
        """The whole input: Hallo's wav2vec2 features are normalised over and computed from the whole
        (vocal-separated) file, so a live input is read to its end before the first clip."""
        return None

    def video_frames(self, audio, speech, fps: float) -> int:
        """Hallo's frame count: ``S = math.ceil(n / 16000 * fps)`` in floating point over the 16 kHz
        vocals (hallo 8fd7c57 ``hallo/datasets/audio_processor.py``, ``AudioProcessor.preprocess``),
        the length ``scripts/inference.py`` cuts its frames to before writing
        (``tensor_result[:, :audio_length]``, line 343) (one more than the exact count for some lengths, e.g. 4480 samples at
        25 fps: 8 frames, not 7)."""
        if self.audio.kind == "wav2vec2_file":
            return self.audio.num_frames(speech, fps)
        return super().video_frames(audio, speech, fps)
