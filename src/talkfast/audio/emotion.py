"""MEMO's per-clip emotion labels (memoavatar/memo a5aee30, ``memo/utils/audio_utils.py``
``extract_audio_emotion_labels``, ``memo/models/emotion_classifier.py``, ``inference.py`` and
``memo/pipelines/video_pipeline.py``; facts: preparation.md "Hallo and MEMO, audio" item 6).

What MEMO does, and what this module does the same way:

1. The waveform is the 16 kHz copy of the *input* file (``ffmpeg -ar 16000``, not the vocals),
   read by torchaudio (int16 / 32768), first channel only.
2. Windows (:func:`emotion_windows`), in MEMO's assignment order, later ones overriding earlier
   ones: samples ``[0, 2 s)`` label ``[0, 1 s)``; for every ``i = 1 s, 2 s, ... < N - 1 s`` the
   samples ``[i - 1 s, i + 2 s)`` (cut at N) label ``[i, i + 1 s)``; the last 2 s label the last
   second. Slices clamp like Python's, so a file under 2 s is one window.
3. Each window is layer-normed over all its samples (eps 1e-5, no affine), run through
   emotion2vec (funasr's own ``Emotion2vec`` class, ``extract_features``: the frames after the
   extra tokens), averaged over frames, classified by MEMO's ``misc/audio_emotion_classifier``
   (a ReLU MLP ending in a softmax), softmaxed again (MEMO does) and arg-maxed: one label 0-8.
4. The per-sample labels (int32) become ``S'`` per-frame labels with ``F.interpolate(...,
   mode="nearest")`` (``S'`` = MEMO's padded frame count, a multiple of 16).
5. Clip ``t`` (frames ``16t .. 16t+15``) takes ``torch.mode`` of its labels, computed on the CPU
   as in MEMO (the labels never leave the CPU there): of several equally frequent labels the
   smallest wins.

Loading: emotion2vec is built from funasr 1.4.16's ``Emotion2vec`` class (imported lazily) with
the ``model_conf`` of the folder's ``config.yaml``, as MEMO builds it from funasr's
``download_model`` result (``vocab_size=-1``: no classification head). The folder is parsed here,
not by ``download_model``: that function can install the folder's ``requirements.txt`` and import
its code when the config says ``trust_remote_code``, and funasr ``eval``s the config's
``feature_encoder_spec`` string, which is checked here to be only integers, tuples, lists, ``+``
and ``*`` first. ``model.pt`` is read with ``torch.load(weights_only=True)`` (what funasr itself
gets under torch >= 2.6, where that is the default), unwrapped (``state_dict`` /
``model_state_dict`` / ``model``) and matched with an optional ``module.`` prefix, as MEMO's
``load_emotion2vec_model`` does.

Where this differs from MEMO, on purpose: a model key missing from ``model.pt`` or of another
shape is a :class:`CheckpointError` (MEMO silently keeps the random initial value); checkpoint
keys the model does not have (the ``proj`` head of emotion2vec+) are ignored, as there. MEMO runs
the models on CUDA, where convolutions default to TF32; labels are arg-maxes, so this matters only
for windows whose two best classes are nearly tied.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkfast.audio.features import _as_waveform
from talkfast.errors import CheckpointError, InputError

__all__ = [
    "SAMPLE_RATE",
    "CLIP_FRAMES",
    "NUM_EMOTIONS",
    "CLASSIFIER_SUBFOLDER",
    "EmotionWindow",
    "emotion_windows",
    "read_emotion2vec_config",
    "load_emotion2vec",
    "AudioEmotionClassifier",
    "load_emotion_classifier",
    "emotion2vec_features",
    "window_emotion",
    "sample_emotions",
    "frame_emotions",
    "clip_modes",
    "clip_emotions",
    "EmotionLabeller",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CLIP_FRAMES = 16  # MEMO's num_generated_frames_per_clip
NUM_EMOTIONS = 9  # MEMO's AudioEmotionClassifierModel.num_emotion_classes; 9 itself = "no emotion"
CLASSIFIER_SUBFOLDER = "misc/audio_emotion_classifier"
CLASSIFIER_WEIGHTS = "diffusion_pytorch_model.safetensors"
CLASSIFIER_IN_FEATURES = 1024  # hard-coded in MEMO's classifier (emotion2vec_plus_large's width)


# ----------------------------------------------------------------------------- waveform + windows


def _first_channel(wave) -> torch.Tensor:
    """A 1-D float32 CPU tensor: ``(N,)`` as it is, ``(C, N)`` (torchaudio's layout) its first
    row; int16 PCM is scaled by 1/32768 as torchaudio.load does (:func:`~talkfast.audio.features._as_waveform`)."""
    if isinstance(wave, (np.ndarray, torch.Tensor)) and wave.ndim == 2:
        if wave.shape[0] > wave.shape[1]:
            raise InputError(f"a 2-D waveform must be (channels, N) as torchaudio reads it, got shape {tuple(wave.shape)}")
        wave = wave[0]
    elif isinstance(wave, (np.ndarray, torch.Tensor)) and wave.ndim != 1:
        raise InputError(f"expected a waveform of shape (N,) or (channels, N), got shape {tuple(wave.shape)}")
    t = _as_waveform(wave)
    if t.numel() == 0:
        raise InputError("the audio is empty: no emotion can be read from it")
    return t.contiguous()


@dataclass(frozen=True)
class EmotionWindow:
    """One classifier call: samples ``[start, stop)`` are classified and the label is written to
    samples ``[label_start, label_stop)``."""

    start: int
    stop: int
    label_start: int
    label_stop: int


def emotion_windows(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[EmotionWindow]:
    """MEMO's windows over ``num_samples`` samples, in its order (later ones overwrite labels of
    earlier ones): the first 2 s, 3 s centred on each inner second, the last 2 s."""
    n, sr = int(num_samples), int(sample_rate)
    if n <= 0 or sr <= 0:
        raise InputError(f"need a positive sample count and rate, got {num_samples} samples at {sample_rate} Hz")
    wins = [EmotionWindow(0, min(2 * sr, n), 0, min(sr, n))]
    for i in range(sr, n - sr, sr):
        wins.append(EmotionWindow(i - sr, min(i + 2 * sr, n), i, min(i + sr, n)))
    wins.append(EmotionWindow(max(n - 2 * sr, 0), n, max(n - sr, 0), n))
    return wins


# ----------------------------------------------------------------------------- emotion2vec


_SPEC_NODES = (ast.Expression, ast.List, ast.Tuple, ast.Constant, ast.BinOp, ast.Add, ast.Mult, ast.Load)


def _safe_spec(spec) -> str:
    """The ``feature_encoder_spec`` string funasr ``eval``s, checked to hold only int literals,
    tuples, lists, ``+`` and ``*``, and returned as the plain literal it evaluates to."""
    if not isinstance(spec, str) or len(spec) > 2000:
        raise ValueError("feature_encoder_spec must be a short string")
    tree = ast.parse(spec, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _SPEC_NODES) or (isinstance(node, ast.Constant) and type(node.value) is not int):
            raise ValueError(f"feature_encoder_spec may only hold integers, tuples, lists, + and *: {spec!r}")

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        a, b = value(node.left), value(node.right)
        if isinstance(node.op, ast.Mult) and isinstance(b, int) and not 0 <= b <= 64:
            raise ValueError(f"feature_encoder_spec repeats a list {b} times")
        return a + b if isinstance(node.op, ast.Add) else a * b

    layers = value(tree.body)
    if not (isinstance(layers, list) and layers and all(
            isinstance(x, tuple) and len(x) == 3 and all(isinstance(v, int) and v > 0 for v in x) for x in layers)):
        raise ValueError(f"feature_encoder_spec must be a list of (dim, kernel, stride) tuples: {spec!r}")
    return repr(layers)


def _inside(folder: Path, name, default: str) -> Path:
    """``folder / name`` for a plain relative name that stays inside ``folder``; else the default."""
    if isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts:
        return folder / name
    return folder / default


def read_emotion2vec_config(folder: str | Path) -> tuple[dict, Path]:
    """``(model_conf, weights_path)`` of a local emotion2vec folder (ModelScope/HF layout:
    ``configuration.json`` naming ``config.yaml`` and ``model.pt``, or those two alone), as
    funasr's ``download_model`` resolves them for a local path; ``feature_encoder_spec`` checked."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"emotion2vec folder {root} does not exist or is not a folder "
                              "(MEMO uses iic/emotion2vec_plus_large)")
    metas = {}
    cj = root / "configuration.json"
    if cj.is_file():
        try:
            metas = json.loads(cj.read_text(encoding="utf-8")).get("file_path_metas", {}) or {}
        except Exception as err:
            raise CheckpointError(f"cannot read {cj}: {err}") from err
        if not isinstance(metas, dict):
            raise CheckpointError(f"{cj}: 'file_path_metas' is not a mapping")
    config_path = _inside(root, metas.get("config"), "config.yaml")
    weights = _inside(root, metas.get("init_param"), "model.pt")
    for p in (config_path, weights):
        if not p.is_file():
            raise CheckpointError(f"incomplete emotion2vec folder {root}: {p.name} is missing")
    try:
        from omegaconf import OmegaConf  # funasr's own config reader (safe YAML)

        conf = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as err:
        raise CheckpointError(f"cannot read the emotion2vec config {config_path}: {err}") from err
    if not isinstance(conf, dict) or conf.get("model") != "Emotion2vec" or not isinstance(conf.get("model_conf"), dict):
        raise CheckpointError(f"{config_path} is not an emotion2vec config (expected 'model: Emotion2vec' "
                              "and a 'model_conf' mapping)")
    model_conf = conf["model_conf"]
    try:
        audio = model_conf["modalities"]["audio"]
        audio["feature_encoder_spec"] = _safe_spec(audio["feature_encoder_spec"])
    except (KeyError, TypeError, ValueError, SyntaxError) as err:
        raise CheckpointError(f"{config_path}: bad modalities.audio.feature_encoder_spec: {err}") from err
    return model_conf, weights


def _import_emotion2vec():
    """funasr's Emotion2vec class, imported quietly: funasr prints ffmpeg notices and sets up the
    root logger (INFO, a stderr handler) on import; both are undone."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from funasr.models.emotion2vec.model import Emotion2vec
    except ImportError as err:
        raise CheckpointError(f"MEMO's emotion labels need funasr (pip install funasr): {err}") from err
    finally:
        root.setLevel(level)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
    return Emotion2vec


def _read_state(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or objects beyond plain tensors (never unpickled)
        raise CheckpointError(f"cannot read emotion2vec weights from {path} (plain tensors only): {err}") from err
    for key in ("state_dict", "model_state_dict", "model"):  # MEMO's load_emotion2vec_model unwrapping
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold an emotion2vec state dict (a mapping of names to tensors)")
    return obj


def _listing(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def load_emotion2vec(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """funasr's ``Emotion2vec`` built from a local emotion2vec folder, weights from its
    ``model.pt``, fp32, eval mode, on ``device``."""
    model_conf, weights = read_emotion2vec_config(folder)
    Emotion2vec = _import_emotion2vec()
    try:
        with torch.device("meta"):
            model = Emotion2vec(model_conf=model_conf, vocab_size=-1)
    except Exception as err:
        raise CheckpointError(f"cannot build emotion2vec from {Path(folder).expanduser() / 'config.yaml'}: {err}") from err
    src = _read_state(weights)
    own = model.state_dict()
    picked, missing, shapes = {}, [], []
    for k, v in own.items():
        k_src = "module." + k if "module." + k in src else k
        if k_src not in src:
            missing.append(k)
        elif tuple(src[k_src].shape) != tuple(v.shape):
            shapes.append(f"{k}: file {tuple(src[k_src].shape)} vs model {tuple(v.shape)}")
        else:
            picked[k] = src[k_src].to(torch.float32)
    if missing or shapes:
        parts = ([f"{len(missing)} missing keys: {_listing(missing)}"] if missing else []) + \
                ([f"{len(shapes)} shape mismatches: {_listing(shapes)}"] if shapes else [])
        raise CheckpointError(f"{weights} does not match its config: " + "; ".join(parts))
    extra = sorted(set(src) - {("module." + k if "module." + k in src else k) for k in own})
    if extra:
        log.info("emotion2vec %s: %d keys the feature model does not use were ignored (%s)", weights, len(extra),
                 _listing(extra))
    model.load_state_dict(picked, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def emotion2vec_features(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """One window's emotion2vec feature ``(1, D)``: layer norm over the whole window, funasr's
    ``extract_features``, mean over frames (MEMO's ``extract_emotion`` before the classifier)."""
    device = next(model.parameters()).device
    x = window.to(device=device, dtype=torch.float32)
    x = F.layer_norm(x, x.shape).view(1, -1)
    try:
        feats = model.extract_features(x)["x"]
    except RuntimeError as err:  # too short for the convolution stack
        raise InputError(f"an emotion window of {x.shape[-1]} samples is too short for emotion2vec: {err}") from err
    if feats.shape[1] == 0:
        raise InputError(f"an emotion window of {x.shape[-1]} samples is too short for emotion2vec")
    return feats.mean(dim=1)


# ----------------------------------------------------------------------------- classifier


class AudioEmotionClassifier(torch.nn.Module):
    """MEMO's ``AudioEmotionClassifierModel``: one Linear (``layers``) or ``fc1, relu1, ...,
    fc<n>`` (``layers.fc<k>``), 9 outputs, softmax in ``forward``."""

    def __init__(self, num_classifier_layers: int = 5, num_classifier_channels: int = 2048,
                 in_features: int = CLASSIFIER_IN_FEATURES):
        super().__init__()
        if num_classifier_layers == 1:
            self.layers = torch.nn.Linear(in_features, NUM_EMOTIONS)
        else:
            seq = [("fc1", torch.nn.Linear(in_features, num_classifier_channels)), ("relu1", torch.nn.ReLU())]
            for k in range(2, num_classifier_layers):
                seq += [(f"fc{k}", torch.nn.Linear(num_classifier_channels, num_classifier_channels)),
                        (f"relu{k}", torch.nn.ReLU())]
            seq.append((f"fc{num_classifier_layers}", torch.nn.Linear(num_classifier_channels, NUM_EMOTIONS)))
            self.layers = torch.nn.Sequential(OrderedDict(seq))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layers(x), dim=-1)


def _classifier_dir(folder: Path) -> Path:
    sub = folder / CLASSIFIER_SUBFOLDER
    return sub if sub.is_dir() else folder


def load_emotion_classifier(folder: str | Path, device: str | torch.device = "cpu",
                            in_features: int = CLASSIFIER_IN_FEATURES) -> AudioEmotionClassifier:
    """MEMO's emotion classifier from the MEMO checkpoint root (its ``misc/audio_emotion_classifier``)
    or that folder itself: diffusers layout, ``config.json`` (``num_classifier_layers``,
    ``num_classifier_channels``; MEMO's defaults 5 / 2048 when absent) and
    ``diffusion_pytorch_model.safetensors``. Missing or mis-shaped keys are a CheckpointError,
    extra keys a log line (diffusers' ``from_pretrained`` rules)."""
    root = _classifier_dir(Path(folder).expanduser())
    cfg_path, w_path = root / "config.json", root / CLASSIFIER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"MEMO's emotion classifier is missing: expected {CLASSIFIER_SUBFOLDER}/config.json and "
                              f"{CLASSIFIER_WEIGHTS} under {Path(folder).expanduser()}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except Exception as err:
        raise CheckpointError(f"cannot read {cfg_path}: {err}") from err
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} is not a JSON object")
    layers, channels = cfg.get("num_classifier_layers", 5), cfg.get("num_classifier_channels", 2048)
    for name, v in (("num_classifier_layers", layers), ("num_classifier_channels", channels)):
        if type(v) is not int or not 1 <= v <= 65536:
            raise CheckpointError(f"{cfg_path}: {name} must be a positive integer, got {v!r}")
    if layers > 64:
        raise CheckpointError(f"{cfg_path}: num_classifier_layers {layers} is implausible")
    try:
        from safetensors.torch import load_file

        state = load_file(str(w_path))
    except Exception as err:
        raise CheckpointError(f"cannot read weights from {w_path}: {err}") from err
    with torch.device("meta"):
        model = AudioEmotionClassifier(layers, channels, in_features)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(own) - set(state))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {own[k]}" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != own[k]]
    if missing or shapes:
        parts = ([f"{len(missing)} missing keys: {_listing(missing)}"] if missing else []) + \
                ([f"{len(shapes)} shape mismatches: {_listing(shapes)}"] if shapes else [])
        raise CheckpointError(f"{w_path} does not match its config.json ({layers} layers, {channels} channels, "
                              f"{in_features} inputs): " + "; ".join(parts))
    extra = sorted(set(state) - set(own))
    if extra:
        log.warning("MEMO emotion classifier %s: %d keys the model does not have were ignored (%s)", w_path,
                    len(extra), _listing(extra))
    model.load_state_dict({k: state[k].to(torch.float32) for k in own}, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- labels


@torch.no_grad()
def window_emotion(emotion2vec: torch.nn.Module, classifier: torch.nn.Module, window: torch.Tensor) -> int:
    """One window's label 0-8: features -> classifier (softmax) -> softmax again -> arg-max,
    as MEMO's ``extract_emotion`` (the second softmax can only matter through round-off ties)."""
    feats = emotion2vec_features(emotion2vec, window)
    dev = next(classifier.parameters()).device
    probs = torch.softmax(classifier(feats.to(dev)), dim=-1)
    return int(torch.argmax(probs, dim=-1).item())


def sample_emotions(wave16k, emotion2vec: torch.nn.Module, classifier: torch.nn.Module,
                    sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """MEMO's per-sample labels ``(N,)`` int32 (CPU) of the 16 kHz input (first channel)."""
    wave = _first_channel(wave16k)
    labels = torch.full_like(wave, -1, dtype=torch.int32)
    for w in emotion_windows(wave.numel(), sample_rate):
        labels[w.label_start:w.label_stop] = window_emotion(emotion2vec, classifier, wave[w.start:w.stop])
    return labels


def frame_emotions(sample_labels: torch.Tensor, padded_frames: int) -> torch.Tensor:
    """Per-sample labels -> ``padded_frames`` per-frame labels (int32, CPU), nearest neighbour as
    MEMO's ``F.interpolate(labels[None, None].float(), size=S', mode="nearest")``."""
    if type(padded_frames) is not int or padded_frames <= 0:
        raise InputError(f"the padded frame count must be a positive integer, got {padded_frames!r}")
    lab = torch.as_tensor(sample_labels).reshape(-1)
    if lab.numel() == 0:
        raise InputError("no per-sample emotion labels to interpolate")
    out = F.interpolate(lab.cpu().float()[None, None], size=padded_frames, mode="nearest")
    return out[0, 0].int()


def clip_modes(frame_labels: torch.Tensor, clip_frames: int = CLIP_FRAMES) -> list[int]:
    """One label per clip: ``torch.mode`` (CPU; ties -> the smallest label) of frames
    ``clip_frames*t .. clip_frames*t + clip_frames - 1``; the frame count must be a multiple of
    ``clip_frames`` (MEMO's padded count always is)."""
    lab = torch.as_tensor(frame_labels).reshape(-1).cpu()
    if clip_frames <= 0 or lab.numel() == 0 or lab.numel() % clip_frames:
        raise InputError(f"{lab.numel()} frame labels do not split into clips of {clip_frames} frames")
    return [int(torch.mode(lab[s:s + clip_frames]).values.item()) for s in range(0, lab.numel(), clip_frames)]


def clip_emotions(wave16k, padded_frames: int, emotion2vec: torch.nn.Module, classifier: torch.nn.Module,
                  clip_frames: int = CLIP_FRAMES, sample_rate: int = SAMPLE_RATE) -> list[int]:
    """MEMO's emotion label (0-8) of each ``clip_frames``-frame clip of a ``padded_frames``-frame
    video, from the 16 kHz copy of the input audio."""
    return clip_modes(frame_emotions(sample_emotions(wave16k, emotion2vec, classifier, sample_rate),
                                     padded_frames), clip_frames)


class EmotionLabeller:
    """Both models, loaded once: ``EmotionLabeller.load(emotion2vec_dir, memo_dir)``, then
    :meth:`frame_labels` / :meth:`clip_labels` per audio file."""

    def __init__(self, emotion2vec: torch.nn.Module, classifier: torch.nn.Module):
        self.emotion2vec, self.classifier = emotion2vec, classifier

    @classmethod
    def load(cls, emotion2vec_dir: str | Path, memo_dir: str | Path,
             device: str | torch.device = "cpu") -> "EmotionLabeller":
        """The classifier's input width is emotion2vec's ``embed_dim`` (1024 for emotion2vec_plus_large,
        MEMO's hard-coded width): a classifier for another width is a CheckpointError naming it."""
        emotion2vec = load_emotion2vec(emotion2vec_dir, device)
        width = read_emotion2vec_config(emotion2vec_dir)[0].get("embed_dim", CLASSIFIER_IN_FEATURES)
        return cls(emotion2vec, load_emotion_classifier(memo_dir, device, in_features=int(width)))

    def frame_labels(self, wave16k, padded_frames: int) -> torch.Tensor:
        """Per-frame labels ``(S',)`` int32."""
        return frame_emotions(sample_emotions(wave16k, self.emotion2vec, self.classifier), padded_frames)

    def clip_labels(self, wave16k, padded_frames: int, clip_frames: int = CLIP_FRAMES) -> list[int]:
        """One label per clip (see :func:`clip_emotions`)."""
        return clip_modes(self.frame_labels(wave16k, padded_frames), clip_frames)
