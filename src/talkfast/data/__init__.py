"""talkfast.data: a synthetic talking-head corpus grown from espeak-ng speech and procedural faces.

* :mod:`~talkfast.data.speech`: ``synthesize(text, voice, rate, pitch, seed)`` -> 16 kHz audio plus
  phoneme intervals from libespeak-ng's phoneme events;
* :mod:`~talkfast.data.visemes`: phoneme -> (openness, width) and a smooth per-frame mouth target;
* :mod:`~talkfast.data.render`: :class:`Identity` and :class:`FaceRenderer` (frames, face/mouth
  boxes, head masks; static backgrounds);
* :mod:`~talkfast.data.corpus`: ``build_corpus`` / ``load_corpus`` (identity- and sentence-disjoint
  train/test splits, deterministic by seed);
* :mod:`~talkfast.data.cli`: the ``talkfast data`` command.

The names below are imported lazily, so ``import talkfast.data.cli`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "synthesize": "speech",
    "espeak_available": "speech",
    "SpeechError": "speech",
    "mouth_target": "visemes",
    "viseme": "visemes",
    "MouthTarget": "visemes",
    "Identity": "render",
    "FaceRenderer": "render",
    "RenderResult": "render",
    "build_corpus": "corpus",
    "load_corpus": "corpus",
    "corpus_summary": "corpus",
    "Sample": "corpus",
    "SENTENCES": "sentences",
}

__all__ = [
    "SENTENCES", "FaceRenderer", "Identity", "MouthTarget", "RenderResult", "Sample", "SpeechError",
    "build_corpus", "corpus_summary", "espeak_available", "load_corpus", "mouth_target", "synthesize", "viseme",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"talkfast.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'talkfast.data' has no attribute {name!r}")
