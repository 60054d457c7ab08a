"""Each model family's input-preparation recipe: which steps its inference script runs on the
user's photo and wav, which file of the user's folder supplies each, and what talkfast does when
that file is missing.

The steps live in their own rooms (shared by the families):

| step | room | Hallo (8fd7c57) | EchoMimic (a53e970) | MEMO (a5aee30) |
|---|---|---|---|---|
| ``landmarks`` (face/lip boxes, masks) | :mod:`talkfast.face.landmarker`, :mod:`talkfast.face.hallo_prep` | MediaPipe FaceLandmarker | — | — |
| ``face_box`` (crop, face mask) | :mod:`talkfast.face.mtcnn` | — | facenet-pytorch MTCNN | — |
| ``identity`` (image context) | :mod:`talkfast.face.identity` | insightface | — | insightface |
| ``vocals`` | :mod:`talkfast.audio.vocals` | Kim_Vocal_2 (MDX-Net) | — | Kim_Vocal_2 |
| ``emotion`` | :mod:`talkfast.audio.emotion` | — | — | emotion2vec + classifier |

A folder without a step's model takes that step's fallback (today's approximation) with one
warning naming the missing file (:meth:`PrepPlan.warn_fallbacks`); ``doctor --checkpoint`` prints
the plan and the sidecar records it. The embedded model keeps its own preparation (it was
trained with it): its recipe has no steps.

Where the originals keep these models (relative to the folder the user passes as ``--checkpoint``):
Hallo's ``pretrained_models/face_analysis/models/`` (``face_landmarker_v2_with_blendshapes.task``,
``scrfd_10g_bnkps.onnx``, ``glintr100.onnx``, ...) and ``pretrained_models/audio_separator/
Kim_Vocal_2.onnx`` (hallo ``configs/inference/default.yaml``); MEMO's ``misc/face_analysis``,
``misc/vocal_separator/Kim_Vocal_2.onnx`` and ``misc/audio_emotion_classifier`` (memo
``configs/inference.yaml``), with emotion2vec_plus_large fetched by name at run time by MEMO — here
looked for in the folder, then in the local model caches funasr/modelscope and Hugging Face use.
EchoMimic's MTCNN weights ship inside the facenet-pytorch wheel.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

STEPS = ("landmarks", "face_box", "identity", "vocals", "emotion")
SKIP = "none"  # ``--prep STEP=none``: skip the step's original model (its fallback runs)


@dataclass(frozen=True)
class Step:
    """One preparation step of a family: its name, what the original runs, where its model may be
    (candidate paths relative to the checkpoint folder; the first that exists wins) and the
    fallback when none is there."""

    name: str
    original: str
    candidates: tuple[str, ...]
    fallback: str
    kind: str = "file"  # "file", "dir" (a folder that must exist), or "package" (weights in a Python package)
    requires: tuple[str, ...] = ()  # folders the step also reads, relative to the checkpoint folder


def _emotion2vec_candidates() -> tuple[str, ...]:
    """emotion2vec_plus_large in the folder, then in the local caches MEMO's funasr/modelscope and
    Hugging Face download it to (absolute paths; never fetched)."""
    home = Path.home()
    ms = Path(os.environ.get("MODELSCOPE_CACHE", home / ".cache" / "modelscope" / "hub"))
    hf = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface")) / "hub"))
    snapshots = sorted((hf / "models--emotion2vec--emotion2vec_plus_large" / "snapshots").glob("*"))
    return ("emotion2vec_plus_large", "misc/emotion2vec_plus_large",
            str(ms / "iic" / "emotion2vec_plus_large"), str(ms / "models" / "iic" / "emotion2vec_plus_large"),
            *(str(s) for s in snapshots))


def _recipe(family: str) -> tuple[Step, ...]:
    if family == "hallo":
        return (
            Step("landmarks", "MediaPipe FaceLandmarker: face box (36 silhouette points, x1.2) and lip box "
                 "(20 lip points, x2.0), blurred soft masks, FaceLocator box",
                 ("face_analysis/models/face_landmarker_v2_with_blendshapes.task",),
                 "OpenCV Haar face and lip boxes through the same mask chain"),
            Step("identity", "insightface FaceAnalysis (SCRFD + ArcFace): the largest face's 512-d embedding",
                 ("face_analysis/models",), "zeros (the original's no-face embedding)", kind="dir"),
            Step("vocals", "MDX-Net vocal separation (Kim_Vocal_2.onnx) before wav2vec2",
                 ("audio_separator/Kim_Vocal_2.onnx",), "the whole mix goes to wav2vec2"),
        )
    if family == "memo":
        return (
            Step("identity", "insightface FaceAnalysis (SCRFD + ArcFace): the largest face's 512-d embedding",
                 ("misc/face_analysis/models", "misc/face_analysis"), "zeros (the original's no-face embedding)",
                 kind="dir"),
            Step("vocals", "MDX-Net vocal separation (Kim_Vocal_2.onnx) before wav2vec2",
                 ("misc/vocal_separator/Kim_Vocal_2.onnx",), "the whole mix goes to wav2vec2"),
            Step("emotion", "emotion2vec_plus_large + misc/audio_emotion_classifier: a label per second, "
                 "the most frequent per clip", _emotion2vec_candidates(),
                 "one label for the whole video (--emotion, default neutral)", kind="dir",
                 requires=("misc/audio_emotion_classifier",)),
        )
    if family == "echomimic":
        return (
            Step("face_box", "facenet-pytorch MTCNN on the BGR image: face box -> crop and face mask",
                 ("facenet_pytorch",), "OpenCV Haar face box", kind="package"),
        )
    return ()  # talkfast's own models: their own preparation


@dataclass
class PrepSource:
    """What ``generate`` will run for one step: ``path`` of the original's model (None: the
    fallback), ``why`` when the fallback runs."""

    step: Step
    path: Path | None
    why: str = ""

    @property
    def original(self) -> bool:
        return self.path is not None

    def record(self) -> dict:
        """The sidecar's entry for this step."""
        if self.path is not None:
            return {"ran": "original", "model": str(self.path)}
        return {"ran": "fallback", "fallback": self.step.fallback, "why": self.why}

    def line(self) -> str:
        if self.path is not None:
            return f"{self.step.name}: original ({self.path})"
        return f"{self.step.name}: fallback, {self.step.fallback} ({self.why})"


@dataclass
class PrepPlan:
    """The preparation a family's folder allows: one :class:`PrepSource` per step of its recipe."""

    family: str
    sources: dict[str, PrepSource] = field(default_factory=dict)

    root: Path | None = None

    def path(self, step: str) -> Path | None:
        s = self.sources.get(step)
        return s.path if s is not None else None

    def record(self) -> dict:
        return {name: s.record() for name, s in self.sources.items()}

    def lines(self) -> list[str]:
        return [s.line() for s in self.sources.values()]

    def warn_fallbacks(self) -> None:
        """One warning per step that falls back, naming the missing file."""
        for s in self.sources.values():
            if s.path is None and s.why != "skipped with --prep":
                log.warning("%s input preparation, %s: %s; using %s", self.family, s.step.name, s.why, s.step.fallback)


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``--prep STEP=PATH`` items -> {step: path}; ``STEP=none`` skips the original model."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise InputError(f"--prep takes STEP=PATH (or STEP=none), got {item!r}")
        if name not in STEPS:
            raise InputError(f"--prep: unknown step {name!r}; steps: {', '.join(STEPS)}")
        out[name] = value.strip()
    return out


def _package_dir(name: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _exists(p: Path, kind: str) -> bool:
    return p.is_dir() if kind == "dir" else p.is_file()


def plan_preparation(family: str, root: str | Path | None, overrides: dict[str, str] | None = None) -> PrepPlan:
    """Which model each step of ``family``'s recipe will read from ``root`` (the checkpoint folder),
    after ``overrides`` ({step: path or 'none'}, from ``--prep``). An override naming a missing path
    is an error (the user asked for that file); a missing default location is the fallback."""
    overrides = dict(overrides or {})
    steps = _recipe(family)
    names = {s.name for s in steps}
    unused = sorted(set(overrides) - names)
    if unused:
        raise InputError(f"--prep {', '.join(unused)}: not a preparation step of {family} "
                         f"(its steps: {', '.join(sorted(names)) or 'none'})")
    base = Path(root).expanduser() if root is not None else None
    plan = PrepPlan(family, root=base)
    for step in steps:
        given = overrides.get(step.name)
        if given is not None:
            if given.lower() == SKIP:
                plan.sources[step.name] = PrepSource(step, None, "skipped with --prep")
                continue
            p = Path(given).expanduser()
            want = "file" if step.kind == "file" else "folder"
            if not _exists(p, "dir" if step.kind != "file" else "file"):
                raise InputError(f"--prep {step.name}={given}: no such {want}")
            plan.sources[step.name] = PrepSource(step, p)
            continue
        if step.kind == "package":
            found = _package_dir(step.candidates[0])
            plan.sources[step.name] = PrepSource(
                step, found, "" if found else f"the Python package {step.candidates[0]} is not installed")
            continue
        found = None
        for c in step.candidates:
            p = Path(c) if Path(c).is_absolute() else (base / c if base is not None else None)
            if p is not None and _exists(p, step.kind):
                found = p
                break
        where = step.candidates[0] if base is None else str(base / step.candidates[0])
        why = "" if found else f"{where} not found"
        lacking = [r for r in step.requires if base is None or not (base / r).is_dir()]
        if found is not None and lacking:
            found, why = None, f"{lacking[0] if base is None else base / lacking[0]} not found"
        plan.sources[step.name] = PrepSource(step, found, why)
    return plan
