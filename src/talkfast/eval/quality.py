"""Quality of a model on held-out synthetic-corpus samples, against ground truth.

For each sample of a corpus split (held-out identities speaking held-out sentences in the ``test``
split) the model gets the sample's neutral reference portrait (with its exact face regions, as in
training) and its speech, with plain sampling (no accelerator). Measured:

- **PSNR / SSIM** of the generated frames against the rendered ground truth.
- **Lip sync**: :func:`talkfast.eval.lipsync.lipsync_score` (Pearson r of the mouth opening measured
  in the frames against the phoneme-derived target) of the generated video; the same metric on
  the ground-truth frames is the ceiling.
- **Controls** (near 0 when the mouth follows the audio it was given):
  *mismatched target*: the generated video scored against another sample's target;
  *shuffled audio*: a second generation of the same portrait driven by another sample's speech,
  scored against the sample's own target (which that video never heard). That video scored
  against the speech it did hear is reported too (should be high again).
- **Identity**: cosine similarity of a face descriptor (the upper face — hair, brows, eyes, skin —
  per frame, mean-centred pixels of the face box's upper part at 16x16) between the frames and the
  reference portrait. Generated vs own reference, ground truth vs own reference (ceiling),
  generated vs another identity's reference (floor), and the drift: similarity in the first vs
  the last clip.

:func:`run_quality` does the work; :func:`write_report` writes ``QUALITY.md``, ``quality.json``
and ``contact_sheet.png`` (per sample: reference, ground-truth and generated frames).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..paths import display_path
from . import metrics
from .lipsync import lipsync_score

Log = Callable[[str], None]
DESCRIPTOR_SIZE = 16
UPPER_FACE = 0.55  # share of the face box (from the top) used by the identity descriptor


# ---------------------------------------------------------------------------------------------
# identity descriptor
# ---------------------------------------------------------------------------------------------


def identity_descriptors(frames: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Per-frame descriptors (N, D) of ``frames`` (N, 3, H, W) in [0, 1]: the upper part of each
    frame's face box (``boxes`` (N, 4) or (4,) x0, y0, x1, y1 in the frames' pixels), resized to
    16x16, mean-centred per channel and L2-normalised."""
    n, _, h, w = frames.shape
    boxes = np.broadcast_to(np.asarray(boxes, np.float64).reshape(-1, 4), (n, 4)) if np.size(boxes) == 4 \
        else np.asarray(boxes, np.float64)[:n]
    out = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes):
        xa, xb = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.ceil(x1), 1, w))
        ya = int(np.clip(np.floor(y0), 0, h - 1))
        yb = int(np.clip(np.ceil(y0 + UPPER_FACE * (y1 - y0)), ya + 1, h))
        crop = frame[:, ya:yb, xa:max(xb, xa + 1)].float()[None]
        small = F.interpolate(crop, size=(DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        small = small - small.mean(dim=(1, 2), keepdim=True)
        out.append(small.flatten() / small.flatten().norm().clamp_min(1e-8))
    return torch.stack(out)


def identity_similarity(frames: torch.Tensor, boxes: np.ndarray, reference: torch.Tensor, ref_box) -> np.ndarray:
    """Per-frame cosine similarity (N,) of the frames' descriptors to the reference's."""
    ref = identity_descriptors(reference[None], np.asarray(ref_box))[0]
    return (identity_descriptors(frames, boxes) @ ref).numpy()


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class SampleQuality:
    sample: str
    identity: int
    sentence: int
    frames: int
    seconds: float
    psnr: float
    ssim: float
    lipsync: float
    lipsync_truth: float
    lipsync_mismatched_target: float
    shuffled_audio_from: str | None = None
    lipsync_shuffled_audio: float | None = None  # against the sample's own target (never heard)
    lipsync_shuffled_heard: float | None = None  # against the target of the speech it heard
    identity_sim: float = 0.0
    identity_sim_truth: float = 0.0
    identity_sim_other: float = 0.0
    identity_first_clip: float = 0.0
    identity_last_clip: float = 0.0
    # Continuity across clips (metrics.clip_boundary_ratio: frame-to-frame change across a clip
    # boundary / inside clips); None for a sample of one clip.
    clip_boundary: float | None = None
    clip_boundary_truth: float | None = None


@dataclass
class QualityResult:
    samples: list[SampleQuality]
    settings: dict
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "summary": self.summary, "samples": [asdict(s) for s in self.samples]}


SUMMARY_FIELDS = ("psnr", "ssim", "lipsync", "lipsync_truth", "lipsync_mismatched_target", "lipsync_shuffled_audio",
                  "lipsync_shuffled_heard", "identity_sim", "identity_sim_truth", "identity_sim_other",
                  "identity_first_clip", "identity_last_clip", "clip_boundary", "clip_boundary_truth")


def summarize(samples: list[SampleQuality]) -> dict:
    out = {"samples": len(samples), "identities": len({s.identity for s in samples})}
    for name in SUMMARY_FIELDS:
        vals = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        if vals:
            out[name] = float(np.mean(vals))
            out[name + "_std"] = float(np.std(vals))
    return out


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def select_samples(samples: list, limit: int | None) -> list:
    """Up to ``limit`` samples, spread over identities: each identity's first sample, then each
    identity's second, and so on (the corpus lists samples by identity)."""
    by_identity: dict[int, list] = {}
    for s in samples:
        by_identity.setdefault(s.identity_id, []).append(s)
    order = []
    depth = max((len(v) for v in by_identity.values()), default=0)
    for k in range(depth):
        order += [v[k] for _, v in sorted(by_identity.items()) if k < len(v)]
    return order if limit is None else order[: max(0, int(limit))]


def _as_unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(frames, np.uint8)).permute(0, 3, 1, 2).float() / 255.0


def _as_uint8(video: torch.Tensor) -> np.ndarray:
    return (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def run_quality(pipe, corpus_dir: str | Path, split: str = "test", limit: int | None = None, options=None,
                shuffled_audio: bool = True, log: Log | None = None) -> tuple[QualityResult, list[dict]]:
    """Generate every selected sample of ``split`` with ``pipe`` (plain sampling) and measure it.

    Returns the result and, per sample, the frames for a contact sheet (``reference``, ``truth``,
    ``generated`` as float (N, 3, H, W) in [0, 1])."""
    from ..data.corpus import load_corpus
    from ..errors import InputError

    log = log or (lambda _m: None)
    opts = pipe.resolve(options)
    samples = select_samples(load_corpus(corpus_dir, split), limit)
    if len(samples) < 2:
        raise InputError(f"the quality report needs at least 2 {split!r} samples in {corpus_dir} (the controls pair them)")
    size = pipe.cfg.image_size
    if int(samples[0].meta["size"]) != size:
        raise InputError(f"corpus frames are {samples[0].meta['size']}px, the {pipe.cfg.name} model makes {size}px")

    def generate(sample, audio) -> torch.Tensor:
        clips: list[torch.Tensor] = []
        pipe.generate(sample.reference_path, audio, None, opts, on_clip=lambda fr: clips.append(fr.detach().float().cpu()),
                      regions=sample.regions())
        return torch.cat(clips)

    results, sheets = [], []
    t_all = time.perf_counter()
    for i, s in enumerate(samples):
        other = samples[(i + 1) % len(samples)]  # a different identity (samples are spread over identities)
        t0 = time.perf_counter()
        video = generate(s, s.audio())
        secs = time.perf_counter() - t0
        truth = _as_unit(s.frames())
        n = min(len(video), len(truth))
        video, truth = video[:n], truth[:n]
        boxes = s.face_boxes()[:n]
        ref = _as_unit(s.reference()[None])[0]
        gen_u8 = _as_uint8(video)
        sq = SampleQuality(
            sample=s.id, identity=s.identity_id, sentence=s.sentence_id, frames=n, seconds=secs,
            psnr=metrics.psnr(video, truth), ssim=metrics.ssim(video, truth),
            lipsync=lipsync_score(gen_u8, boxes, s.openness[:n]),
            lipsync_truth=lipsync_score(_as_uint8(truth), boxes, s.openness[:n]),
            lipsync_mismatched_target=lipsync_score(gen_u8, boxes, other.openness))
        if shuffled_audio:
            heard = generate(s, other.audio())
            m = min(len(heard), len(boxes))
            heard_u8 = _as_uint8(heard[:m])
            sq.shuffled_audio_from = other.id
            sq.lipsync_shuffled_audio = lipsync_score(heard_u8, boxes[:m], s.openness[:m])
            sq.lipsync_shuffled_heard = lipsync_score(heard_u8, boxes[:m], other.openness[:m])
        ref_box = s.face_boxes()[0]
        sim = identity_similarity(video, boxes, ref, ref_box)
        clip = pipe.cfg.clip_frames
        sq.identity_sim = float(sim.mean())
        sq.identity_first_clip, sq.identity_last_clip = float(sim[:clip].mean()), float(sim[-clip:].mean())
        sq.identity_sim_truth = float(identity_similarity(truth, boxes, ref, ref_box).mean())
        other_ref = _as_unit(other.reference()[None])[0]
        sq.identity_sim_other = float(identity_similarity(video, boxes, other_ref, other.face_boxes()[0]).mean())
        if n > clip:
            sq.clip_boundary = metrics.clip_boundary_ratio(video, clip)["ratio"]
            sq.clip_boundary_truth = metrics.clip_boundary_ratio(truth, clip)["ratio"]
        results.append(sq)
        picks = np.linspace(0, n - 1, 5).round().astype(int)
        sheets.append({"name": s.id, "reference": ref, "truth": truth[picks], "generated": video[picks],
                       "frames": picks.tolist()})
        log(f"[{i + 1}/{len(samples)}] {s.id}: PSNR {sq.psnr:.2f} dB, SSIM {sq.ssim:.3f}, lip-sync {sq.lipsync:.2f} "
            f"(truth {sq.lipsync_truth:.2f}, shuffled audio {sq.lipsync_shuffled_audio}), identity {sq.identity_sim:.3f} "
            f"({secs:.1f} s)")
    settings = {
        "talkfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "model": pipe.cfg.name, "weights": display_path(pipe.source), "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "corpus": display_path(corpus_dir), "split": split,
        "steps": opts.steps, "guidance": opts.guidance, "seed": opts.seed, "fps": opts.fps,
        "motion_source": opts.motion_source, "accelerator": "none (plain sampling)", "seconds": time.perf_counter() - t_all,
    }
    return QualityResult(results, settings, summarize(results)), sheets


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def contact_sheet(sheets: list[dict], path: str | Path, rows: int = 6) -> Path:
    """Per sample a row: reference | ground truth at 5 times | generated at the same times."""
    from PIL import Image, ImageDraw

    sheets = sheets[:rows]
    if not sheets:
        raise ValueError("no frames for a contact sheet")
    side = sheets[0]["reference"].shape[-1]
    cols = 1 + len(sheets[0]["truth"]) + len(sheets[0]["generated"])
    label_h, gap = 14, 6
    sheet = Image.new("RGB", (cols * side + 2 * gap, label_h + len(sheets) * (side + label_h)), "white")
    draw = ImageDraw.Draw(sheet)

    def tile(t: torch.Tensor) -> Image.Image:
        return Image.fromarray(_as_uint8(t[None])[0])

    heads = ["reference"] + ["truth"] * len(sheets[0]["truth"]) + ["generated"] * len(sheets[0]["generated"])
    for c, head in enumerate(heads):
        x = c * side + (gap if c >= 1 else 0) + (gap if c > len(sheets[0]["truth"]) else 0)
        draw.text((x + 3, 1), head, fill="black")
    for r, row in enumerate(sheets):
        y = label_h + r * (side + label_h)
        tiles = [row["reference"], *row["truth"], *row["generated"]]
        for c, t in enumerate(tiles):
            x = c * side + (gap if c >= 1 else 0) + (gap if c > len(row["truth"]) else 0)
            sheet.paste(tile(t), (x, y))
        frames = ", ".join(str(f) for f in row["frames"])
        draw.text((3, y + side + 1), f"{row['name']}  (frames {frames})", fill="black")
    from PIL.PngImagePlugin import PngInfo

    from ..io.write_rule import PNG_MARK, replacing

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(*PNG_MARK)  # recognised as talkfast's by the write rule
    with replacing(path) as tmp:
        sheet.save(tmp, format="PNG", pnginfo=info)
    return path


def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def to_markdown(result: QualityResult, sheet_name: str = "contact_sheet.png", command: str | None = None) -> str:
    s, st = result.summary, result.settings

    def pm(name: str, fmt: str = ".3f") -> str:
        if name not in s:
            return "n/a"
        return f"{format(s[name], fmt)} ± {format(s[name + '_std'], fmt)}"

    lines = [
        "# Quality of the embedded model on held-out samples", "",
        f"Model `{st['model']}` ({st['weights']}), {st['steps']} DDIM steps, CFG {st['guidance']}, seed {st['seed']}, "
        f"plain sampling, motion frames from {st['motion_source']}, {st['device']} {st['dtype']}; corpus `{st['corpus']}` split `{st['split']}`: "
        f"{s['samples']} samples of {s['identities']} identities never seen in training, speaking sentences "
        f"never seen in training. Run time {st['seconds']:.0f} s.", "",
    ]
    if command:
        lines += ["Regenerate with:", "", "```", command, "```", ""]
    lines += [
        "| measure | value (mean ± std over samples) |", "|---|---|",
        f"| PSNR vs ground truth (dB) | {pm('psnr', '.2f')} |",
        f"| SSIM vs ground truth | {pm('ssim')} |",
        f"| lip-sync r, generated | {pm('lipsync')} |",
        f"| lip-sync r, ground-truth frames (ceiling) | {pm('lipsync_truth')} |",
        f"| control: generated vs another sample's target | {pm('lipsync_mismatched_target')} |",
        f"| control: driven by another sample's speech, vs own target | {pm('lipsync_shuffled_audio')} |",
        f"| that video vs the speech it heard | {pm('lipsync_shuffled_heard')} |",
        f"| identity similarity to own reference, generated | {pm('identity_sim')} |",
        f"| identity similarity, ground truth (ceiling) | {pm('identity_sim_truth')} |",
        f"| identity similarity to another identity's reference (floor) | {pm('identity_sim_other')} |",
        f"| identity similarity, first clip -> last clip | {_f(s.get('identity_first_clip'))} -> "
        f"{_f(s.get('identity_last_clip'))} |",
        f"| clip boundaries: frame change across / inside clips, generated | {pm('clip_boundary', '.2f')} |",
        f"| clip boundaries, ground truth at the same frames | {pm('clip_boundary_truth', '.2f')} |",
        "",
        "Lip-sync r: Pearson correlation of the mouth opening measured in the frames with the "
        "phoneme-derived target (`talkfast.eval.lipsync`). Identity similarity: cosine of mean-centred "
        "16x16 upper-face pixels (hair, brows, eyes, skin) against the reference portrait "
        "(`talkfast.eval.quality`). Clip boundaries: mean absolute frame-to-frame change between the "
        "last frame of a generated clip and the first of the next, over the same inside clips "
        "(`talkfast.eval.metrics.clip_boundary_ratio`; 1 = clips join as smoothly as frames follow "
        "each other).", "",
        f"![contact sheet]({sheet_name})", "",
        "Per sample:", "",
        "| sample | frames | PSNR | SSIM | lip-sync | truth | shuffled audio | identity | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q in result.samples:
        lines.append(f"| {q.sample} | {q.frames} | {q.psnr:.2f} | {q.ssim:.3f} | {q.lipsync:.2f} | {q.lipsync_truth:.2f} "
                     f"| {_f(q.lipsync_shuffled_audio, '.2f')} | {q.identity_sim:.3f} | {q.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def check_report(out_dir: str | Path, stem: str = "QUALITY", *, inputs=(), overwrite: bool = False) -> list[Path]:
    """The write rule (:func:`talkfast.io.write_rule.check_writes`) for ``quality --out``, before
    any work: never onto an input; an existing ``<stem>.md`` / ``quality.json`` /
    ``contact_sheet.png`` that is not talkfast's (title line, JSON keys, PNG chunk) only with
    ``overwrite``."""
    from ..io.write_rule import check_writes, json_with_keys, png_by_talkfast, text_starting_with

    out = Path(out_dir)
    ours = {".md": text_starting_with("# Quality of "), ".json": json_with_keys("settings", "summary", "samples"),
            ".png": png_by_talkfast}
    return check_writes([out / f"{stem}.md", out / "quality.json", out / "contact_sheet.png"], inputs=inputs,
                        overwrite=overwrite, ours=lambda p: ours[p.suffix](p), mark="not a talkfast quality report")


def write_report(result: QualityResult, sheets: list[dict], out_dir: str | Path, command: str | None = None,
                 stem: str = "QUALITY", *, checked: bool = False) -> dict[str, Path]:
    """``<stem>.md``, ``quality.json`` and ``contact_sheet.png`` in ``out_dir``, each atomically;
    unless ``checked`` (:func:`check_report` ran before the work), checked here first."""
    from ..io.write_rule import write_text_atomic

    if not checked:
        check_report(out_dir, stem)
    out = Path(out_dir)
    sheet = contact_sheet(sheets, out / "contact_sheet.png")
    js = write_text_atomic(out / "quality.json", json.dumps(result.to_dict(), indent=2))
    md = write_text_atomic(out / f"{stem}.md", to_markdown(result, sheet.name, command))
    return {"markdown": md, "json": js, "sheet": sheet}
