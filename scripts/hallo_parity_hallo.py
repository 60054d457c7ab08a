"""Hallo's side of ``hallo_parity.py``: importing Hallo's modules from a checkout, building its
networks from talkfast's state dict in the run state of Hallo's inference, and running them (the
single UNet call, and the clip loop of ``scripts/inference.py`` around ``FaceAnimatePipeline``).

Nothing of Hallo is copied here: every Hallo class and function is imported (or, for
``process_audio_emb``, read and executed) from the folder named with ``--hallo-src``.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.machinery
import sys
import types
import warnings
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from talkfast.models.config import ModelConfig

from hallo_parity_setup import Recorder, noise_drawn_in  # scripts/, on sys.path when a script runs


# ----------------------------------------------------------------------------- configuration
def sd_unet_config(cfg: ModelConfig) -> dict:
    """An SD-1.5 ``unet/config.json`` at the tiny widths (what Hallo's loaders read)."""
    u = cfg.unet
    return {
        "act_fn": "silu",
        "attention_head_dim": u.heads,  # SD's name for the number of heads
        "block_out_channels": list(u.block_out_channels),
        "center_input_sample": False,
        "cross_attention_dim": u.cross_attention_dim,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": u.in_channels,
        "layers_per_block": u.layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": u.resnet_eps,
        "norm_num_groups": u.norm_groups,
        "out_channels": u.out_channels,
        "sample_size": cfg.latent_size,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }


def check_config(cfg: ModelConfig, yaml_cfg: dict) -> None:
    u, kw = cfg.unet, yaml_cfg["unet_additional_kwargs"]
    mm = kw["motion_module_kwargs"]
    problems = []
    if u.block_out_channels[0] * 4 != u.time_embed_dim or u.time_proj_dim != u.block_out_channels[0]:
        problems.append("time widths")
    if mm["num_attention_heads"] != u.motion_heads or mm["temporal_position_encoding_max_len"] != u.motion_max_len:
        problems.append("motion-module heads / positions")
    if any(c % 32 for c in u.block_out_channels):
        problems.append("widths must be multiples of 32 (Hallo's motion-module GroupNorm)")
    if yaml_cfg["data"]["n_motion_frames"] != cfg.motion_frames:
        problems.append("n_motion_frames")
    if problems:
        raise SystemExit(f"parity config does not fit Hallo's: {', '.join(problems)}")


# ----------------------------------------------------------------------------- import
def import_hallo(src: Path) -> types.SimpleNamespace:
    """Hallo's modules from ``src`` (a checkout: hallo/, configs/, scripts/)."""
    if not (src / "hallo" / "models" / "unet_3d.py").exists():
        raise SystemExit(f"--hallo-src {src}: no hallo/models/unet_3d.py there (need a Hallo checkout)")
    # hallo/models/motion_module.py imports xformers at module level (used only when enabled):
    # an empty stand-in, with a module spec so that importlib.util.find_spec() accepts it.
    for name in ("xformers", "xformers.ops"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
            sys.modules[name] = mod
    sys.modules["xformers"].ops = sys.modules["xformers.ops"]
    sys.path.insert(0, str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ns = types.SimpleNamespace(
            unet2d=importlib.import_module("hallo.models.unet_2d_condition"),
            unet3d=importlib.import_module("hallo.models.unet_3d"),
            msa=importlib.import_module("hallo.models.mutual_self_attention"),
            face_locator=importlib.import_module("hallo.models.face_locator"),
            image_proj=importlib.import_module("hallo.models.image_proj"),
            audio_proj=importlib.import_module("hallo.models.audio_proj"),
            face_animate=importlib.import_module("hallo.animate.face_animate"),
        )
    for mod in vars(ns).values():
        if not Path(mod.__file__).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"{mod.__name__} was imported from {mod.__file__}, not from {src}")
    ns.process_audio_emb = function_from_file(src / "scripts" / "inference.py", "process_audio_emb")
    import yaml

    ns.yaml = yaml.safe_load((src / "configs" / "inference" / "default.yaml").read_text())
    return ns


def function_from_file(path: Path, name: str):
    """One top-level function of a Python file, executed on its own (the file's imports are not)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            scope = {"torch": torch}
            code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
            exec(code, scope)  # noqa: S102 -- the user's Hallo checkout, named on the command line
            return scope[name]
    raise SystemExit(f"{path}: no function {name}")


# ----------------------------------------------------------------------------- build
class HalloNet(torch.nn.Module):
    """The five children under the key prefixes of Hallo's ``Net`` (scripts/inference.py)."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)


def enable_checkpointing_as_in_diffusers_0_27(model: torch.nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = True


def build_hallo(h, cfg: ModelConfig, state: dict) -> HalloNet:
    sd = sd_unet_config(cfg)
    kw = copy.deepcopy(h.yaml["unet_additional_kwargs"])
    kw["audio_attention_dim"] = cfg.unet.audio_attention_dim
    u = cfg.unet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = h.unet2d.UNet2DConditionModel.from_config(sd)
        cfg3d = dict(sd, down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                     up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
                     mid_block_type="UNetMidBlock3DCrossAttn")
        denoising = h.unet3d.UNet3DConditionModel.from_config(cfg3d, **kw)
        net = HalloNet(
            reference_unet=reference,
            denoising_unet=denoising,
            face_locator=h.face_locator.FaceLocator(conditioning_embedding_channels=u.block_out_channels[0],
                                                   block_out_channels=cfg.face_locator_channels),
            imageproj=h.image_proj.ImageProjModel(cross_attention_dim=u.cross_attention_dim,
                                                  clip_embeddings_dim=cfg.image_embed_dim,
                                                  clip_extra_context_tokens=cfg.image_tokens),
            audioproj=h.audio_proj.AudioProjModel(seq_len=cfg.audio_window, blocks=cfg.audio_layers,
                                                  channels=cfg.audio_feature_dim, intermediate_dim=cfg.audio_hidden,
                                                  output_dim=u.audio_attention_dim, context_tokens=cfg.audio_tokens),
        )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"talkfast's keys do not load into Hallo's modules: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    # the run state of scripts/inference.py: from_pretrained -> eval; from_config / plain
    # constructors -> training mode; requires_grad_(False); enable_gradient_checkpointing()
    net.requires_grad_(False)
    net.reference_unet.eval()
    enable_checkpointing_as_in_diffusers_0_27(net.reference_unet)
    enable_checkpointing_as_in_diffusers_0_27(net.denoising_unet)
    return net


def hallo_scheduler(h) -> DDIMScheduler:
    """scripts/inference.py: DDIMScheduler(**noise_scheduler_kwargs), zero-SNR overrides."""
    kw = dict(h.yaml["noise_scheduler_kwargs"])
    if h.yaml.get("enable_zero_snr"):
        kw.update(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    return DDIMScheduler(**kw)


# ----------------------------------------------------------------------------- (a) one UNet call
@torch.no_grad()
def hallo_unet_call(h, hn: HalloNet, inp: dict) -> tuple[torch.Tensor, dict]:
    """What FaceAnimatePipeline.__call__ does around one step: a ReferenceAttentionControl writer
    on the ReferenceNet and a reader on the denoising UNet (``fusion_blocks="full"``), the
    ReferenceNet call, ``update()``, then the denoising UNet on [uncond, cond]. Returns the output
    and the bank list each reader held (keyed by the reader's layer name)."""
    ref, ctx, x, face, masks = inp["ref"], inp["ctx"], inp["x"], inp["face"], inp["masks"]
    t, f = inp["t"], inp["frames"]
    writer = h.msa.ReferenceAttentionControl(hn.reference_unet, do_classifier_free_guidance=True, mode="write",
                                             batch_size=1, fusion_blocks="full")
    reader = h.msa.ReferenceAttentionControl(hn.denoising_unet, do_classifier_free_guidance=True, mode="read",
                                             batch_size=1, fusion_blocks="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hn.reference_unet(ref.repeat(2, 1, 1, 1), torch.zeros_like(t), encoder_hidden_states=ctx, return_dict=False)
        reader.update(writer)
        banks = {}
        for name, mod in hn.denoising_unet.named_modules():
            if type(mod).__name__ == "TemporalBasicTransformerBlock":
                key = name.rsplit(".transformer_blocks.", 1)[0]
                banks[key] = [b.clone() for b in mod.bank]
        out = hn.denoising_unet(
            torch.cat([x, x]), t, encoder_hidden_states=ctx,
            mask_cond_fea=face.expand(-1, -1, f, -1, -1),
            full_mask=[m[None].expand(2 * f, -1) for m in masks[0]],
            face_mask=[m[None].expand(2 * f, -1) for m in masks[1]],
            lip_mask=[m[None].expand(2 * f, -1) for m in masks[2]],
            audio_embedding=inp["audio"], motion_scale=list(inp["motion_scale"]), return_dict=False)[0]
    reader.clear()
    writer.clear()
    return out, banks


# ----------------------------------------------------------------------------- (b) the clip loop
def run_hallo_clips(h, hn: HalloNet, vae, cfg, dt, dev, portrait, identity, feats, steps, guidance, seed,
                    motion_scale, inputs_as: torch.dtype | None = None, noise_as: torch.dtype | None = None) -> dict:
    """scripts/inference.py's clip loop around FaceAnimatePipeline.__call__ (our own code).

    For the fp64 reference of a lower-precision run: ``inputs_as`` rounds the fp32 inputs (pixels,
    FaceLocator input, masks, identity, audio features) to that dtype first, ``noise_as`` draws
    the initial noise in that dtype, so that the reference starts from the values that run starts
    from."""
    pipeline = h.face_animate.FaceAnimatePipeline(
        vae=copy.deepcopy(vae), reference_unet=hn.reference_unet, denoising_unet=hn.denoising_unet,
        face_locator=hn.face_locator, scheduler=hallo_scheduler(h), image_proj=hn.imageproj)
    pipeline.to(device=dev, dtype=dt)
    pipeline.set_progress_bar_config(disable=True)
    audioproj = hn.audioproj.to(device=dev, dtype=dt)
    rec = Recorder()
    rec.wrap(pipeline.vae, "encode", lambda a, out: a[0].detach().clone())
    rec.wrap(pipeline, "decode_latents", lambda a, out: a[0].detach().clone())
    rec.wrap(pipeline.vae, "decode", lambda a, out: out.sample.detach().clone(), "vae_decode")
    f, m = cfg.clip_frames, cfg.motion_frames
    size = cfg.image_size

    def given(x: torch.Tensor) -> torch.Tensor:  # the inputs as Hallo's ImageProcessor returns them (float32)
        x = x.float()
        return x if inputs_as is None else x.to(inputs_as).float()

    # from talkfast's portrait
    src_pixels = given(portrait.pixels[None])  # (1, 3, H, W) in [-1, 1]
    face_region = given(portrait.locator_input[None])
    full = [given(mk).repeat(f, 1) for mk in portrait.masks.full]
    face = [given(mk).repeat(f, 1) for mk in portrait.masks.face]
    lip = [given(mk).repeat(f, 1) for mk in portrait.masks.lip]
    face_emb = given(identity).reshape(1, -1)
    audio_emb = h.process_audio_emb(given(feats))
    times = audio_emb.shape[0] // f
    results = []
    generator = torch.manual_seed(seed)
    for t in range(times):
        if not results:
            pixel_values_ref_img = torch.cat([src_pixels, src_pixels.repeat(m, 1, 1, 1)])
        else:
            last = results[-1][0].permute(1, 0, 2, 3)[-m:] * 2.0 - 1.0
            pixel_values_ref_img = torch.cat([src_pixels, last.to(dtype=src_pixels.dtype)])
        audio_tensor = audio_emb[t * f : min((t + 1) * f, audio_emb.shape[0])][None].to(device=dev, dtype=dt)
        audio_tensor = audioproj(audio_tensor)
        with warnings.catch_warnings(), noise_drawn_in(noise_as):
            warnings.simplefilter("ignore")
            out = pipeline(ref_image=pixel_values_ref_img[None], audio_tensor=audio_tensor, face_emb=face_emb,
                           face_mask=face_region, pixel_values_full_mask=full, pixel_values_face_mask=face,
                           pixel_values_lip_mask=lip, width=size, height=size, video_length=f,
                           num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                           motion_scale=list(motion_scale))
        results.append(out.videos)
    frames = [r[0].permute(1, 0, 2, 3) for r in results]  # (F, 3, H, W) per clip
    raw = [torch.cat(rec.calls["vae_decode"][c * f : (c + 1) * f]) for c in range(times)]
    # what the VAE encoder got per clip (pixel_values_ref_img after the pipeline's preprocessing and cast)
    return {"frames": frames, "latents": rec.calls["decode_latents"], "ref_pixels": rec.calls["encode"], "decoder": raw}
