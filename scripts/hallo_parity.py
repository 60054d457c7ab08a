"""Numerical parity of talkfast's ``hallo`` architecture with Hallo's released code (issue 13).

Builds a tiny network twice with the SAME random weights -- once as talkfast's
:class:`~talkfast.models.net.TalkingHeadNet` (the ``hallo`` preset's code path and switches:
``tile_reference_groups`` and ``fp16_reference_banks`` on, motion frames prepended, plain-block
motion modules off; only the widths are shrunk), once from Hallo's own modules, imported at run
time from the folder given with ``--hallo-src`` (a checkout of github.com/fudan-generative-vision/hallo;
nothing of Hallo is copied into talkfast) -- feeds both the same inputs and compares:

(a) one denoising-UNet call (CFG batch [uncond, cond]) with the reference attention written by a
    ReferenceNet call, and the reference banks each reader holds;
(b) two chained clips of the full sampling loop with pixel motion frames: clip 2's motion frames
    are the last 2 decoded frames of clip 1, mapped back to [-1, 1] and re-encoded by the VAE.

What of Hallo is driven (commit 8fd7c57):

- ``hallo/models/unet_2d_condition.py`` ``UNet2DConditionModel`` (ReferenceNet),
  ``hallo/models/unet_3d.py`` ``UNet3DConditionModel`` built the way ``from_pretrained_2d`` builds
  it (an SD-1.5-style config with its 3D block types, ``**unet_additional_kwargs`` read from
  ``configs/inference/default.yaml``; only ``audio_attention_dim`` is changed, to the tiny width),
  ``hallo/models/face_locator.py`` ``FaceLocator``, ``hallo/models/image_proj.py``
  ``ImageProjModel``, ``hallo/models/audio_proj.py`` ``AudioProjModel``;
- ``hallo/models/mutual_self_attention.py`` ``ReferenceAttentionControl`` (writer/reader,
  ``fusion_blocks="full"``, ``update()`` with its default fp16 dtype) for (a);
- ``hallo/animate/face_animate.py`` ``FaceAnimatePipeline.__call__`` for every clip of (b), with a
  ``DDIMScheduler`` made from the yaml's ``noise_scheduler_kwargs`` and ``enable_zero_snr`` exactly as
  ``scripts/inference.py`` ``inference_process`` makes it;
- ``scripts/inference.py`` ``process_audio_emb`` (the 5-frame audio windows; its function definition
  is read from the file and executed -- the rest of that script needs insightface, mediapipe,
  audio-separator and wav2vec2). The clip loop of ``inference_process`` (``torch.manual_seed(42)``,
  first clip: the source image repeated as motion frames; later clips: the last
  ``n_motion_frames`` decoded frames ``* 2 - 1``) is re-enacted by ``run_hallo_clips``.

The run state of Hallo's inference is reproduced: the ReferenceNet in eval mode (diffusers'
``from_pretrained`` sets it), the denoising UNet and the small encoders left in training mode
(``from_config`` does not call ``eval()``), gradient checkpointing enabled on both UNets. So the
denoising UNet's blocks take their ``self.training and self.gradient_checkpointing`` branch, as in
the released inference. ``enable_gradient_checkpointing()`` of the diffusers this runs under (0.42)
passes keyword arguments that Hallo's ``_set_gradient_checkpointing(module, value)`` does not take,
so the script sets ``gradient_checkpointing = True`` on every submodule that has the attribute: what
``enable_gradient_checkpointing()`` did in diffusers 0.27.2, the version Hallo pins.

Inputs that are identical by construction (Hallo's own preprocessing is outside the comparison):
per-frame audio features (Hallo: wav2vec2 hidden states of the vocal-separated audio; talkfast's
``AudioConditioner`` is replaced by one that windows the same features with talkfast's
``window_features``), the face-identity embedding (Hallo: insightface; talkfast's portrait gets the
same vector), and the reference pixels, FaceLocator input and full/face/lip masks (talkfast's
``Portrait`` of the bundled synthetic portrait with its known face/lip boxes, handed to Hallo).

Talkfast internals patched by the script, all reported in its output:

- the audio conditioner and the portrait identity (above);
- with ``--dtype fp64`` only: talkfast draws its initial noise in fp32 and casts it, Hallo's
  ``randn_tensor`` draws it in the model dtype; a CPU generator gives different numbers in fp64
  than in fp32 (for fp16 and fp32 they are the same), so for fp64 talkfast's noise is drawn in fp64
  from the same seeded generator.

Differences are ``max|talkfast - hallo|`` and that divided by ``max|hallo|`` ("relative").

Verdicts (the script exits 1 on FAIL):

- ``--dtype fp64``: PASS when every compared quantity's relative difference is at most 1e-10 and
  the reference banks are bit-identical (fp64 round-off of this network is ~1e-15).
- ``--dtype fp16`` and ``fp32``: judged against the round-off of Hallo's own path at that dtype.
  Hallo is run a second time, in fp64 (the "reference"), from the values the run at that dtype
  starts from: its weights, VAE and inputs rounded to that dtype, its initial noise drawn as that
  run draws it. The noise floor of a quantity is ``d(hallo, reference)``, where d is the max-abs
  difference over the whole tensor. PASS when, for every quantity (the UNet output, the reference
  banks, and per clip the encoder input pixels, final latents, VAE decoder output and frames),
  ``d(talkfast, hallo) <= 2 * d(hallo, reference)``. The factor 2 is the triangle inequality,
  ``d(talkfast, hallo) <= d(talkfast, reference) + d(hallo, reference)``: a talkfast whose own
  round-off is no larger than Hallo's is never more than 2 floors from Hallo. A quantity with a
  floor of 0 must be bit-identical. ``d(talkfast, reference)`` is reported too, and so is the
  control (talkfast with its Hallo switches off), which is not judged: its ratio shows whether the
  rule can see a real difference at that dtype.

The code is split over four files in scripts/: this one (command line, comparisons, verdicts,
report), ``hallo_parity_setup.py`` (configuration, weights, inputs, recorders),
``hallo_parity_talkfast.py`` (talkfast's runs) and ``hallo_parity_hallo.py`` (importing, building
and running Hallo).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # Hallo's decode loop and progress bars (set before tqdm loads)

import argparse
import copy
import dataclasses
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from talkfast.models.net import build_net

# the other files of this script, in scripts/ (sys.path[0] when the script is run)
from hallo_parity_hallo import build_hallo, check_config, hallo_unet_call, import_hallo, run_hallo_clips
from hallo_parity_setup import (clip_inputs, parity_config, portrait_inputs, random_state, tiny_vae,
                                unet_call_inputs, unet_call_inputs_as)
from hallo_parity_talkfast import run_talkfast_clips, talkfast_unet_call

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16}
FP64_LIMIT = 1e-10  # relative; fp64 round-off of this network is ~1e-15
NOISE_MULTIPLE = 2.0  # fp16 / fp32: d(talkfast, hallo) <= this x d(hallo, hallo fp64) (triangle inequality)
CLIP_QUANTITIES = {"reference_pixels": "reference+motion pixels", "latents": "final latents",
                   "decoder_output": "VAE decoder output", "frames": "decoded frames"}


# ----------------------------------------------------------------------------- differences
def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """``a`` talkfast, ``b`` Hallo (or ``a`` Hallo, ``b`` the fp64 reference)."""
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    err = (a64 - b64).abs().max().item()
    scale = b64.abs().max().item()
    return {"max_abs": err, "max_rel": rel(err, scale), "scale": scale, "dtype": str(a.dtype).replace("torch.", ""),
            "shape": list(a.shape), "identical": bool(torch.equal(a64, b64))}


def rel(err: float, scale: float) -> float:
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


def talkfast_banks(banks: dict) -> dict:
    """talkfast's banks, (groups, batch, tokens, width) per reader -> Hallo's (groups*batch, tokens, width)."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in banks.items()}


def hallo_banks(banks: dict) -> dict:
    """Hallo's bank list per reader -> its one tensor (None when a reader holds another number)."""
    return {k: v[0] if len(v) == 1 else None for k, v in banks.items()}


def bank_diff(a: dict, b: dict, names: tuple[str, str] = ("talkfast", "hallo")) -> dict:
    """Every reader's bank. Hallo pairs writers and readers by sorting both by width (stable), so
    a reader could hold another layer's bank; talkfast pairs them by name."""
    banks = {"readers": len(b), "max_abs": 0.0, "scale": 0.0, "identical": True, "mismatched": []}
    if sorted(a) != sorted(b):
        banks["mismatched"].append(f"reader sets differ: {sorted(set(a) ^ set(b))}")
    for key in sorted(set(a) & set(b)):
        ta, tb = a[key], b[key]
        if ta is None or tb is None or ta.shape != tb.shape:
            banks["mismatched"].append(key)
            continue
        d = diff(ta, tb)
        banks["max_abs"] = max(banks["max_abs"], d["max_abs"])
        banks["scale"] = max(banks["scale"], d["scale"])
        banks["identical"] &= d["identical"] and ta.dtype == tb.dtype
        banks[f"dtype_{names[0]}"], banks[f"dtype_{names[1]}"] = str(ta.dtype), str(tb.dtype)
    banks["max_rel"] = rel(banks["max_abs"], banks["scale"])
    return banks


def clip_diffs(ours: dict, theirs: dict) -> list[dict]:
    return [{
        "reference_pixels": diff(ours["ref_pixels"][c], theirs["ref_pixels"][c]),
        "latents": diff(ours["latents"][c], theirs["latents"][c]),
        "decoder_output": diff(ours["decoder"][c], theirs["decoder"][c]),
        "frames": diff(ours["frames"][c], theirs["frames"][c]),
    } for c in range(len(theirs["frames"]))]


# ----------------------------------------------------------------------------- (a) one UNet call
def compare_unet_call(h, tf, switches_off, hn, cfg, dt, dev, seed: int, hn_ref=None) -> tuple[dict, dict]:
    """(a) and its control (talkfast with both Hallo switches off, against the same Hallo output).
    With ``hn_ref`` (Hallo's fp64 reference net) also the floor and talkfast's distance to it."""
    inp = unet_call_inputs(cfg, seed, dt, dev)
    out_tf, banks_tf = talkfast_unet_call(tf, inp)
    out_h, banks_h = hallo_unet_call(h, hn, inp)
    out_off = talkfast_unet_call(switches_off, inp)[0]
    a = {"output": diff(out_tf, out_h), "reference_banks": bank_diff(talkfast_banks(banks_tf), hallo_banks(banks_h)),
         "timestep": int(inp["t"]), "motion_scale": inp["motion_scale"]}
    control = diff(out_off, out_h)
    if hn_ref is not None:
        out_r, banks_r = hallo_unet_call(h, hn_ref, unet_call_inputs_as(inp, torch.float64))
        a["reference"] = {
            "hallo_vs_reference": {"output": diff(out_h, out_r),
                                   "reference_banks": bank_diff(hallo_banks(banks_h), hallo_banks(banks_r),
                                                                ("hallo", "reference"))},
            "talkfast_vs_reference": {"output": diff(out_tf, out_r),
                                      "reference_banks": bank_diff(talkfast_banks(banks_tf), hallo_banks(banks_r),
                                                                   ("talkfast", "reference"))},
            "control_vs_reference": diff(out_off, out_r),
        }
    return a, control


# ----------------------------------------------------------------------------- (b) two chained clips
def compare_clips(h, tf, hn, vae, cfg, dt, dev, seed, steps, guidance, reference=None) -> dict:
    """(b). ``reference``: (Hallo's fp64 reference net, its VAE) for the noise floor."""
    image, regions = portrait_inputs(cfg.image_size)
    feats, identity = clip_inputs(cfg, seed)
    y = h.yaml
    motion_scale = (float(y["pose_weight"]), float(y["face_weight"]), float(y["lip_weight"]))
    noise64 = dt == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ours = run_talkfast_clips(tf, vae, cfg, dt, dev, image, regions, identity, feats, steps, guidance, seed,
                                  motion_scale, noise64)
        t1 = time.perf_counter()
    portrait = ours["portrait"]  # the one talkfast used (pixels, FaceLocator input, masks), for Hallo
    t2 = time.perf_counter()
    theirs = run_hallo_clips(h, hn, vae, cfg, dt, dev, portrait, identity, feats, steps, guidance, seed, motion_scale)
    t3 = time.perf_counter()
    if len(ours["frames"]) != len(theirs["frames"]):
        raise AssertionError(f"talkfast made {len(ours['frames'])} clips, Hallo {len(theirs['frames'])}")
    o = ours["options"]
    result = {"clips": clip_diffs(ours, theirs), "steps": steps, "guidance": guidance, "seed": seed,
              "motion_scale": motion_scale,
              "talkfast_options": {"hallo_context_tiling": o.hallo_context_tiling, "motion_source": o.motion_source},
              "seconds": {"talkfast": round(t1 - t0, 2), "hallo": round(t3 - t2, 2)}}
    if reference is not None:
        hn_ref, vae_ref = reference
        t4 = time.perf_counter()
        ref = run_hallo_clips(h, hn_ref, vae_ref, cfg, torch.float64, dev, portrait, identity, feats, steps, guidance,
                              seed, motion_scale, inputs_as=dt, noise_as=dt)
        result["seconds"]["hallo_fp64_reference"] = round(time.perf_counter() - t4, 2)
        result["reference"] = {"hallo_vs_reference": clip_diffs(theirs, ref),
                               "talkfast_vs_reference": clip_diffs(ours, ref)}
    return result


# ----------------------------------------------------------------------------- verdicts
def noise_row(quantity: str, tf_h: dict, floor: dict, tf_ref: dict, judged: bool = True) -> dict:
    e, f = tf_h["max_abs"], floor["max_abs"]
    ratio = e / f if f > 0 else (0.0 if e == 0 else math.inf)
    keep = ("max_abs", "max_rel")
    return {"quantity": quantity, "judged": judged, "talkfast_vs_hallo": {k: tf_h[k] for k in keep},
            "floor_hallo_vs_reference": {k: floor[k] for k in keep},
            "talkfast_vs_reference": {k: tf_ref[k] for k in keep},
            "ratio": ratio, "ok": ratio <= NOISE_MULTIPLE}


def noise_rows(a: dict, control: dict, b: dict) -> list[dict]:
    """Every judged quantity (and the control) with its noise floor."""
    ra, rb = a["reference"], b["reference"]
    rows = [noise_row(f"(a) {k.replace('_', ' ')}", a[k], ra["hallo_vs_reference"][k], ra["talkfast_vs_reference"][k])
            for k in ("output", "reference_banks")]
    for c, d in enumerate(b["clips"]):
        for k, label in CLIP_QUANTITIES.items():
            rows.append(noise_row(f"(b) clip {c + 1} {label}", d[k], rb["hallo_vs_reference"][c][k],
                                  rb["talkfast_vs_reference"][c][k]))
    rows.append(noise_row("(a) control, switches off (not judged)", control, ra["hallo_vs_reference"]["output"],
                          ra["control_vs_reference"], judged=False))
    return rows


def fp64_failures(a: dict, b: dict) -> list[str]:
    checked = [("(a) output", a["output"])] + [
        (f"(b) clip {c + 1} {k}", d[k]) for c, d in enumerate(b["clips"]) for k in CLIP_QUANTITIES]
    failures = [name for name, d in checked if not d["max_rel"] <= FP64_LIMIT]
    if a["reference_banks"]["mismatched"] or not a["reference_banks"]["identical"]:
        failures.append("(a) reference banks")
    return failures


def noise_failures(a: dict, rows: list[dict]) -> list[str]:
    failures = [r["quantity"] for r in rows if r["judged"] and not r["ok"]]
    if a["reference_banks"]["mismatched"]:
        failures.append("(a) reference banks: readers paired differently")
    return failures


# ----------------------------------------------------------------------------- report
def fmt(d: dict) -> str:
    tag = "  bit-identical" if d["identical"] else ""
    return f"max abs {d['max_abs']:.3e}  max rel {d['max_rel']:.3e}  (|hallo| max {d['scale']:.3g}, {d['dtype']}){tag}"


def print_clips(clips: list[dict]) -> None:
    for c, d in enumerate(clips):
        for k, label in CLIP_QUANTITIES.items():
            print(f"    clip {c + 1} {label + ':':25s}{fmt(d[k])}")


def print_noise_rows(rows: list[dict], dtype: str) -> None:
    print(f"\nnoise floor at {dtype}: max rel differences (max abs over the tensor / max |second|); ratio = "
          f"max abs d(talkfast, hallo) / max abs d(hallo, hallo fp64 reference), judged <= {NOISE_MULTIPLE:g}")
    print(f"    {'quantity':44s}{'talkfast-hallo':>15s}{'hallo-fp64ref':>15s}{'talkfast-fp64ref':>17s}{'ratio':>9s}")
    for r in rows:
        mark = ("ok" if r["ok"] else "OVER") if r["judged"] else ""
        print(f"    {r['quantity']:44s}{r['talkfast_vs_hallo']['max_rel']:15.3e}"
              f"{r['floor_hallo_vs_reference']['max_rel']:15.3e}{r['talkfast_vs_reference']['max_rel']:17.3e}"
              f"{r['ratio']:9.3g}  {mark}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hallo-src", required=True, type=Path, help="a Hallo checkout (hallo/, configs/, scripts/)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp64")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4, help="frames per clip (Hallo: 16)")
    ap.add_argument("--guidance", type=float, default=None, help="default: cfg_scale of Hallo's default.yaml")
    ap.add_argument("--seed", type=int, default=42, help="sampling seed (scripts/inference.py: 42)")
    ap.add_argument("--weights-seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    dt, dev = DTYPES[args.dtype], torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    h = import_hallo(args.hallo_src)
    if not 1 <= args.frames <= 30:  # the motion modules have 32 positions, 2 go to the motion frames
        raise SystemExit("--frames must be between 1 and 30")
    cfg = parity_config(args.frames)
    check_config(cfg, h.yaml)
    guidance = float(h.yaml["cfg_scale"]) if args.guidance is None else args.guidance
    t0 = time.perf_counter()
    tf = build_net(cfg)
    state = random_state(tf, args.weights_seed)
    tf.load_state_dict({k: v.to(dt) for k, v in state.items()})
    tf = tf.to(dev, dt).eval().requires_grad_(False)
    hn = build_hallo(h, cfg, {k: v.to(dt) for k, v in state.items()}).to(dev, dt)
    vae = tiny_vae(cfg, args.weights_seed + 1).to(dev, dt)
    off = cfg.replace(unet=dataclasses.replace(cfg.unet, tile_reference_groups=False, fp16_reference_banks=False))
    switches_off = build_net(off)
    switches_off.load_state_dict({k: v.to(dt) for k, v in state.items()})
    switches_off = switches_off.to(dev, dt).eval().requires_grad_(False)
    judged_by_noise = dt != torch.float64
    hn_ref = vae_ref = None
    if judged_by_noise:  # Hallo's fp64 reference, from the weights of this run (rounded to dt)
        hn_ref = build_hallo(h, cfg, {k: v.to(dt).double() for k, v in state.items()}).to(dev, torch.float64)
        vae_ref = copy.deepcopy(vae).to(torch.float64)

    patches = [
        ("talkfast's AudioConditioner replaced by fixed per-frame features (Hallo: wav2vec2), windowed "
         "with talkfast's window_features; Hallo gets the same features through process_audio_emb"),
        "talkfast's portrait identity embedding replaced by the vector Hallo gets as face_emb (Hallo: insightface)",
    ]
    if dt == torch.float64:
        patches.append("fp64 only: talkfast's initial noise drawn in fp64 from its seeded generator, as Hallo's "
                       "randn_tensor does (talkfast draws fp32 and casts, which equals Hallo's draw in fp32/fp16)")
    shims = [
        "xformers / xformers.ops: empty stand-in modules (imported by hallo/models/motion_module.py, unused)",
        ("enable_gradient_checkpointing(): gradient_checkpointing=True set on every submodule that has it "
         "(diffusers 0.27.2 behaviour; 0.42's calls Hallo's _set_gradient_checkpointing with other arguments)"),
    ]
    reference = []
    if judged_by_noise:
        reference = [
            (f"a second HalloNet and VAE in fp64 with the {args.dtype} weights of this run, fed its inputs rounded "
             f"to {args.dtype}; its initial noise drawn in {args.dtype} from the same seeded generator and cast to "
             "fp64 (torch.randn patched while Hallo's pipeline runs)"),
            ("Hallo's own fixed roundings stay: update() stores the reference banks in fp16, decode_latents "
             "returns fp32"),
        ]
    print(f"talkfast vs Hallo ({args.hallo_src}), dtype {args.dtype}, device {dev}, torch {torch.__version__}")
    print(f"network: hallo code path at widths {cfg.unet.block_out_channels}, {cfg.unet.heads} heads, "
          f"{cfg.image_size}px ({cfg.latent_size}x{cfg.latent_size} latents), {cfg.clip_frames} frames/clip, "
          f"{cfg.motion_frames} motion frames; switches tile_reference_groups={cfg.unet.tile_reference_groups} "
          f"fp16_reference_banks={cfg.unet.fp16_reference_banks}")
    print("talkfast patched by this script:")
    for p in patches:
        print(f"  - {p}")
    print("compatibility shims for Hallo under this environment:")
    for s in shims:
        print(f"  - {s}")
    if reference:
        print("Hallo's fp64 reference (the noise floor):")
        for r in reference:
            print(f"  - {r}")

    a, control = compare_unet_call(h, tf, switches_off, hn, cfg, dt, dev, args.seed, hn_ref)
    print("\n(a) one denoising-UNet call, CFG batch [uncond, cond], reference written by the ReferenceNet")
    print(f"    output:          {fmt(a['output'])}")
    b_ = a["reference_banks"]
    print(f"    reference banks: {b_['readers']} readers, max abs {b_['max_abs']:.3e}, "
          f"{'bit-identical' if b_['identical'] else 'not identical'} "
          f"({b_.get('dtype_talkfast')} / {b_.get('dtype_hallo')})"
          + (f", MISMATCHED {b_['mismatched']}" if b_["mismatched"] else ""))
    print(f"    control, talkfast with both switches off (same weights): max rel {control['max_rel']:.3e}")

    b = compare_clips(h, tf, hn, vae, cfg, dt, dev, args.seed, args.steps, guidance,
                      (hn_ref, vae_ref) if judged_by_noise else None)
    print(f"\n(b) {len(b['clips'])} chained clips, {args.steps} DDIM steps, cfg {guidance}, seed {args.seed}, "
          f"pixel motion frames (talkfast options: {b['talkfast_options']})")
    print_clips(b["clips"])

    rows = []
    if judged_by_noise:
        rows = noise_rows(a, control, b)
        print_noise_rows(rows, args.dtype)
        failures = noise_failures(a, rows)
        rule = f"{args.dtype} noise rule d(talkfast, hallo) <= {NOISE_MULTIPLE:g} x d(hallo, hallo fp64)"
    else:
        failures = fp64_failures(a, b)
        rule = f"fp64 limit {FP64_LIMIT:g} relative"
    seconds = round(time.perf_counter() - t0, 1)
    verdict = "PASS" if not failures else "FAIL: " + ", ".join(failures)
    print(f"\n{rule}: {verdict}   ({seconds} s)")
    result = {"dtype": args.dtype, "device": str(dev), "torch": torch.__version__, "limit_rel": FP64_LIMIT,
              "noise_multiple": NOISE_MULTIPLE, "rule": rule,
              "unet_call": a, "unet_call_control_switches_off": control, "clips": b, "noise_floor": rows,
              "patches": patches, "shims": shims, "reference": reference, "failures": failures,
              "verdict": verdict, "seconds": seconds, "config": dataclasses.asdict(cfg)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
