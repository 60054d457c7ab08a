"""``TalkingHeadNet``: Hallo's ``Net`` wrapper (five children, same key prefixes) plus the glue
between the ReferenceNet writers and the denoising-UNet readers. Models without image or audio
projection (EchoMimic) have no ``imageproj`` / ``audioproj`` child, MEMO has no ``face_locator``
(the attribute is None)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import ReferenceReadProcessor, ReferenceState, ReferenceWriteProcessor
from .config import ModelConfig
from .layers import AudioProj, FaceLocator, ImageProj, MotionModule, SpatialTransformer
from .memo_layers import remember_frames
from .unet import TalkingUNet, UNetCond

CHILDREN = ("reference_unet", "denoising_unet", "face_locator", "imageproj", "audioproj")


class TalkingHeadNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        u = cfg.unet
        self.ref_state = ReferenceState(tile_frames=u.tile_reference_groups,
                                        bank_dtype=torch.float16 if u.fp16_reference_banks else None)
        self.reference_unet = TalkingUNet(u, "reference", self.ref_state)
        self.denoising_unet = TalkingUNet(u, "denoise", self.ref_state)
        self.face_locator = (FaceLocator(u.block_out_channels[0], cfg.face_locator_in, cfg.face_locator_channels)
                             if cfg.face_locator else None)
        self.imageproj = (ImageProj(cfg.image_embed_dim, u.cross_attention_dim, cfg.image_tokens)
                          if cfg.image_projection else None)
        audio_in = cfg.audio_window * cfg.audio_layers * cfg.audio_feature_dim
        self.audioproj = (AudioProj(audio_in, cfg.audio_hidden, cfg.audio_tokens, u.audio_attention_dim)
                          if cfg.audio_projection else None)
        self.readers: dict[str, ReferenceReadProcessor] = {}
        for mod in self.reference_unet.modules():
            if isinstance(mod, SpatialTransformer):
                mod.transformer_blocks[0].attn1.set_processor(ReferenceWriteProcessor(self.ref_state, mod.key))
        for mod in self.denoising_unet.modules():
            if isinstance(mod, SpatialTransformer):
                proc = ReferenceReadProcessor(self.ref_state, mod.key)
                mod.transformer_blocks[0].attn1.set_processor(proc)
                self.readers[mod.key] = proc

    @property
    def device(self) -> torch.device:
        return self.denoising_unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoising_unet.conv_in.weight.dtype

    def write_reference(self, ref_latents: torch.Tensor, context: torch.Tensor | None, hallo_tiling: bool = True,
                        grad: bool = False, groups: int = 2) -> None:
        """Run the ReferenceNet once and keep its features for the readers.

        ref_latents: (S, C, h, w) — the reference image first, then the motion frames.
        context: (G, T, D) — one image context per reference group (CFG: [uncond, cond]).
        With ``hallo_tiling`` the contexts are paired with the G*S images in Hallo's interleaved
        order (image i of the flattened group-major batch gets context i mod G); otherwise group g
        uses context g throughout. ``grad`` keeps the banks in the autograd graph (training).
        With the model's ``fp16_reference_banks`` the banks are then rounded to fp16, the copies
        Hallo's readers get (``ReferenceAttentionControl.update(writer)``, whose dtype defaults to
        fp16; hallo/models/mutual_self_attention.py at 8fd7c57).

        ``context`` None is for a reference UNet without cross-attention (EchoMimic): it runs once on
        the S images with no context and every bank is copied to ``groups`` identical groups (the CFG
        halves; EchoMimic's ``update(writer, do_classifier_free_guidance=True)`` stores
        ``torch.cat([v, v])``, src/models/mutual_self_attention.py at a53e970). Two groups also serve
        calls without CFG, whose items read group 1.
        """
        has_ctx = self.reference_unet.has_cross_attention
        if (context is None) == has_ctx:
            raise ValueError("this model's reference UNet " + ("needs an image context" if has_ctx
                                                               else "takes no context (pass context=None)"))
        s_img = ref_latents.shape[0]
        if context is None:
            g, latents, ctx = 1, ref_latents, None
        else:
            g = context.shape[0]
            latents = ref_latents.repeat(g, 1, 1, 1)
            if hallo_tiling:
                ctx = context.repeat(s_img, 1, 1)
            else:
                ctx = context.repeat_interleave(s_img, 0)
        st = self.ref_state
        st.clear()
        st.groups, st.images, st.mode, st.keep_graph = g, s_img, "write", grad
        t = torch.zeros((), dtype=torch.long, device=latents.device)
        try:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                self.reference_unet(latents, t, UNetCond(context=ctx))
        finally:
            st.mode = "read" if st.banks else "off"
        if context is None:
            for key, bank in st.banks.items():
                st.banks[key] = bank.expand(groups, *bank.shape[1:]).clone()
        if st.bank_dtype is not None:  # the readers' copies (Hallo: update(writer, dtype=torch.float16))
            for key, bank in st.banks.items():
                st.banks[key] = bank.to(st.bank_dtype)

    def clear_reference(self) -> None:
        self.ref_state.clear()

    def memory_modules(self) -> list[MotionModule]:
        """The denoiser's memory motion modules (MEMO's 21; none for the other models)."""
        return [m for m in self.denoising_unet.modules() if isinstance(m, MotionModule) and m.source is not None]

    @torch.no_grad()
    def update_motion_memory(self, reset: bool) -> None:
        """After :meth:`write_reference`: fold the past frames (images 1..S-1 of every reference
        group) into each memory motion module's memory, emptied first when ``reset`` (a new audio:
        MEMO's first clip). MEMO does this inside the first denoising call of each clip; the frames
        do not depend on the noisy latent, so doing it here gives the same memory (see
        :mod:`talkfast.models.memo_layers`)."""
        banks = self.ref_state.banks
        for module in self.memory_modules():
            bank = banks.get(module.source)
            if bank is None or bank.shape[1] < 2:
                raise RuntimeError(f"no past frames for the memory of {module.source}: write the reference "
                                   "(the reference image, then the past frames) first")
            remember_frames(module, bank[:, 1:].to(self.dtype), reset)

    def denoise(self, sample: torch.Tensor, timestep, cond: UNetCond, plan=None) -> torch.Tensor:
        if cond.layout is not None:  # its index tensors are made here, outside a compiled UNet forward
            cond.layout.group_index(sample.device)
        return self.denoising_unet(sample, timestep, cond, plan)


def build_net(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TalkingHeadNet:
    """Build the network; ``device="meta"`` builds shapes only (no memory, no init cost)."""
    with torch.device(device):
        net = TalkingHeadNet(cfg)
    if dtype is not None:
        net = net.to(dtype)
    return net.eval().requires_grad_(False)
