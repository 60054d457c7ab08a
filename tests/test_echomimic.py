"""EchoMimic v1 as a preset of the one module tree (issue 15, stage 1): released keys and shapes on
``meta``, EchoMimic's load strictness, the ``pretrained_weights`` folder loader, and the
audio-through-attn2 forward (antgroup/echomimic at a53e970; shared/reference/echomimic_memo.md §0-1).

Loading decisions checked here (see :func:`talkfast.models.loading.map_echomimic_weights`):
reference_unet and face_locator are strict; the denoiser takes denoising_unet.pth over
motion_module.pth, ignores keys the model lacks and rejects wrong shapes, as EchoMimic does; a
denoiser key found in neither file is an error (EchoMimic would fall back on SD base weights,
which talkfast does not load)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from talkfast.errors import CheckpointError
from talkfast.models.attention import ItemLayout, ScaledSDPAProcessor
from talkfast.models.config import ECHOMIMIC, ECHOMIMIC_POSE, get_preset
from talkfast.models.loading import (
    ECHOMIMIC_VARIANTS,
    load_echomimic,
    map_echomimic_weights,
)
from talkfast.models.net import build_net
from talkfast.models.unet import UNetCond

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every key and shape of EchoMimic's released files (a copy of ../shared/reference/echomimic_keys.json,
# kept in the repository so that the check runs in any checkout).
KEYS = Path(__file__).resolve().parent / "data" / "echomimic_keys.json"
SHARED_KEYS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "echomimic_keys.json"
MANIFEST = json.loads(KEYS.read_text())


def manifest_keys(name: str) -> dict[str, tuple[int, ...]]:
    name = MANIFEST["variants"].get(name, name)
    return {k: tuple(v) for k, v in MANIFEST["files"][name]["keys"].items()}


def meta_state(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in manifest_keys(name).items()}


def shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# A tiny-width EchoMimic: the same switches, SD-1.5 widths scaled down; audio tokens 24 wide
# stand for whisper's 384.
TINY_ECHO = ECHOMIMIC.replace(
    name="echomimic_tiny",
    unet=dataclasses.replace(ECHOMIMIC.unet, block_out_channels=(16, 32, 32, 32), heads=2, norm_groups=4,
                             cross_attention_dim=24, audio_attention_dim=24, time_proj_dim=16, time_embed_dim=32,
                             motion_heads=2),
    image_size=64, clip_frames=4, face_locator_channels=(4, 8, 8, 16), audio_feature_dim=24,
)
TINY_ECHO_POSE = TINY_ECHO.replace(name="echomimic_tiny_pose", face_locator_in=3)


def tiny_cfg(variant: str):
    return TINY_ECHO_POSE if variant.startswith("pose") else TINY_ECHO


def randomized(cfg=TINY_ECHO, seed=0):
    torch.manual_seed(seed)
    net = build_net(cfg)
    with torch.no_grad():  # buffers too (the motion PE tables are stored in motion_module.pth)
        for t in list(net.parameters()) + list(net.buffers()):
            t.normal_(0, 0.1)
    return net


# ------------------------------------------------------------------------------ keys on meta
def test_key_list_is_the_shared_reference():
    if not SHARED_KEYS.exists():
        pytest.skip(f"{SHARED_KEYS} not present (the repository copy is used)")
    assert json.loads(KEYS.read_text()) == json.loads(SHARED_KEYS.read_text())


def test_presets_are_registered_and_switch_the_one_tree():
    assert get_preset("echomimic") is ECHOMIMIC and get_preset("echomimic_pose") is ECHOMIMIC_POSE
    u = ECHOMIMIC.unet
    assert (u.spatial_context, u.spatial_context_scale, u.cross_attention_dim) == ("audio", 3.0, 384)
    assert not u.audio_modules and not u.reference_cross_attention and not u.prepend_motion_frames
    assert u.run_plain_block_motion and u.motion_mid_block and u.motion_max_len == 32
    assert not u.tile_reference_groups and u.fp16_reference_banks
    assert ECHOMIMIC.face_locator_channels == (16, 32, 96, 256) and ECHOMIMIC.face_locator_in == 1
    assert ECHOMIMIC_POSE.face_locator_in == 3
    with pytest.raises(ValueError):
        dataclasses.replace(u, audio_modules=True)  # audio feeds attn2 or the audio modules, not both


@pytest.mark.parametrize("preset,face_file", [("echomimic", "face_locator.pth"),
                                              ("echomimic_pose", "face_locator_pose.pth")])
def test_preset_has_exactly_the_released_keys_and_shapes(preset, face_file):
    net = build_net(get_preset(preset), device="meta")
    assert net.imageproj is None and net.audioproj is None
    assert {k.split(".")[0] for k in net.state_dict()} == {"reference_unet", "denoising_unet", "face_locator"}
    assert shapes(net.reference_unet) == manifest_keys("reference_unet.pth")
    assert shapes(net.face_locator) == manifest_keys(face_file)
    den, mm = manifest_keys("denoising_unet.pth"), manifest_keys("motion_module.pth")
    assert not set(den) & set(mm)
    assert shapes(net.denoising_unet) == {**den, **mm}
    for name, module in (("reference_unet.pth", net.reference_unet), (face_file, net.face_locator)):
        assert sum(p.numel() for p in module.parameters()) == MANIFEST["files"][name]["n_params"]
    # Every variant file has one of these key sets (so the checks above cover all four configs).
    for variant, names in ECHOMIMIC_VARIANTS.items():
        assert [MANIFEST["variants"].get(n, n) for n in names[:3]] == \
            ["reference_unet.pth", "denoising_unet.pth", "motion_module.pth"], variant
    # 21 motion modules (down 0-3 x2, mid, up 0-3 x3); 16 attn2 to_k/to_v (C, 384) without bias.
    assert len({k.split(".temporal_transformer")[0] for k in mm}) == 21
    attn2 = [m for n, m in net.denoising_unet.named_modules() if n.endswith("attn2")]
    assert len(attn2) == 16
    for a in attn2:
        assert a.to_k.weight.shape[1] == 384 and a.to_k.bias is None and a.to_v.bias is None
        assert isinstance(a.processor, ScaledSDPAProcessor) and a.processor.scale == 3.0


def test_full_size_strictness_on_meta():
    """EchoMimic's strictness, on the full-size key sets (meta tensors, no memory)."""
    names = ECHOMIMIC_VARIANTS["default"]

    def files():
        return [meta_state(n) for n in names]

    net = build_net(ECHOMIMIC, device="meta")
    states, ignored = map_echomimic_weights(net, *files(), names)
    assert ignored == {"denoising_unet.pth": [], "motion_module.pth": []}
    for child, state in states.items():
        getattr(net, child).load_state_dict(state, strict=True, assign=True)

    def error(edit) -> str:
        parts = files()
        edit(*parts)
        with pytest.raises(CheckpointError) as err:
            map_echomimic_weights(build_net(ECHOMIMIC, device="meta"), *parts, names)
        return str(err.value)

    k2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    # An extra key in the denoiser's files is ignored (strict=False) and reported.
    ref, den, mm, face = files()
    den["extra.weight"], mm["down_blocks.0.motion_modules.9.x"] = torch.empty(1, device="meta"), torch.empty(1, device="meta")
    _, ignored = map_echomimic_weights(build_net(ECHOMIMIC, device="meta"), ref, den, mm, face, names)
    assert ignored == {"denoising_unet.pth": ["extra.weight"], "motion_module.pth": ["down_blocks.0.motion_modules.9.x"]}
    # A present key with a wrong shape raises (SD's (320, 768) attn2.to_k in place of (320, 384)).
    msg = error(lambda r, d, m, f: d.__setitem__(k2, torch.empty(320, 768, device="meta")))
    assert k2 in msg and "(320, 768)" in msg and "(320, 384)" in msg and "denoising_unet.pth" in msg
    # A denoiser key in neither file raises (no SD base weights to fall back on).
    assert k2 in error(lambda r, d, m, f: d.pop(k2)) and "missing" in error(lambda r, d, m, f: d.pop(k2))
    mk = "mid_block.motion_modules.0.temporal_transformer.proj_out.weight"
    assert mk in error(lambda r, d, m, f: m.pop(mk))
    # reference_unet and face_locator are strict: missing, unexpected and mis-shaped keys all raise.
    assert "conv_in.weight" in error(lambda r, d, m, f: r.pop("conv_in.weight"))
    norm2 = "down_blocks.0.attentions.0.transformer_blocks.0.norm2.weight"  # Hallo/SD has it; EchoMimic not
    assert norm2 in error(lambda r, d, m, f: r.__setitem__(norm2, torch.empty(320, device="meta")))
    pose_face = meta_state("face_locator_pose.pth")["conv_in.weight"]
    msg = error(lambda r, d, m, f: f.__setitem__("conv_in.weight", pose_face))
    assert "face_locator.pth" in msg and "(16, 3, 3, 3)" in msg


# ------------------------------------------------------------------------------ folder loader
def write_folder(net, root: Path, variant: str = "default") -> Path:
    """``net`` written in EchoMimic's pretrained_weights layout: plain state dicts, bare keys."""
    ref, den, mm, face = ECHOMIMIC_VARIANTS[variant]
    root.mkdir(parents=True, exist_ok=True)
    d = net.denoising_unet.state_dict()
    torch.save(dict(net.reference_unet.state_dict()), root / ref)
    torch.save({k: v for k, v in d.items() if ".motion_modules." not in k}, root / den)
    torch.save({k: v for k, v in d.items() if ".motion_modules." in k}, root / mm)
    torch.save(dict(net.face_locator.state_dict()), root / face)
    return root


def edit_file(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize("variant", sorted(ECHOMIMIC_VARIANTS))
def test_folder_round_trip_gives_every_tensor_back(tmp_path, variant):
    cfg = tiny_cfg(variant)
    net = randomized(cfg)
    root = write_folder(net, tmp_path / "pretrained_weights", variant)
    if variant == "acc":
        (root / "audio_processor").mkdir()
        (root / "audio_processor" / "whisper_tiny.pt").write_bytes(b"stage 2")
    got = load_echomimic(root, variant, cfg=cfg)
    assert got.variant == variant
    assert got.whisper == (root / "audio_processor" / "whisper_tiny.pt" if variant == "acc" else None)
    assert got.vae is None
    assert got.ignored == {ECHOMIMIC_VARIANTS[variant][1]: [], ECHOMIMIC_VARIANTS[variant][2]: []}
    assert [p.name for p in got.files["denoising_unet"]] == list(ECHOMIMIC_VARIANTS[variant][1:3])
    want, have = net.state_dict(), got.net.state_dict()
    assert list(have) == list(want)
    for k in want:
        assert not have[k].is_meta and torch.equal(have[k], want[k]), k
    assert not got.net.training and not any(p.requires_grad for p in got.net.parameters())


def test_default_config_follows_the_variant(tmp_path):
    """Without ``cfg`` the full-size preset is built: a tiny folder then fails with a clear error."""
    root = write_folder(randomized(TINY_ECHO_POSE), tmp_path / "w", "pose")
    with pytest.raises(CheckpointError) as err:
        load_echomimic(root, "pose")
    msg = str(err.value)
    assert "'echomimic_pose'" in msg and "shape mismatches" in msg and "face_locator_pose.pth" in msg


class NotATensor:  # pickled into a file that weights_only loading must refuse
    pass


def test_corrupted_folders_give_clear_errors(tmp_path):
    net = randomized()
    base = write_folder(net, tmp_path / "ok")

    def copy(name):
        return Path(shutil.copytree(base, tmp_path / name))

    def failure(root, variant="default") -> str:
        with pytest.raises(CheckpointError) as err:
            load_echomimic(root, variant, cfg=TINY_ECHO)
        return str(err.value)

    # A wrong-shape key in the denoiser file.
    root = copy("shape")
    edit_file(root / "denoising_unet.pth", lambda s: s.__setitem__("conv_in.weight", torch.zeros(16, 4, 1, 1)))
    msg = failure(root)
    assert "denoising_unet.pth" in msg and "conv_in.weight" in msg and "(16, 4, 1, 1)" in msg and "(16, 4, 3, 3)" in msg
    # A missing strict key (reference UNet) and an unexpected one (face locator).
    root = copy("strict")
    key = "up_blocks.3.attentions.2.transformer_blocks.0.norm1.weight"
    edit_file(root / "reference_unet.pth", lambda s: s.pop(key))
    edit_file(root / "face_locator.pth", lambda s: s.__setitem__("extra.bias", torch.zeros(1)))
    msg = failure(root)
    assert f"reference_unet.pth: 1 missing keys: {key}" in msg and "face_locator.pth: 1 unexpected keys: extra.bias" in msg
    # A motion key in neither denoiser file.
    root = copy("motion")
    mk = "up_blocks.0.motion_modules.2.temporal_transformer.norm.bias"
    edit_file(root / "motion_module.pth", lambda s: s.pop(mk))
    assert mk in failure(root)
    # Extra denoiser keys are ignored; denoising_unet.pth wins over motion_module.pth.
    root = copy("extra")
    mk = "down_blocks.3.motion_modules.1.temporal_transformer.proj_out.bias"
    new = torch.full_like(net.state_dict()["denoising_unet." + mk], 7.0)
    edit_file(root / "denoising_unet.pth", lambda s: s.update({"extra.weight": torch.zeros(2), mk: new}))
    got = load_echomimic(root, cfg=TINY_ECHO)
    assert got.ignored["denoising_unet.pth"] == ["extra.weight"]
    assert torch.equal(got.net.state_dict()["denoising_unet." + mk], new)
    # Missing files are all listed; unreadable and non-tensor files are refused.
    root = copy("files")
    (root / "motion_module.pth").unlink()
    (root / "face_locator.pth").unlink()
    msg = failure(root)
    assert "motion_module.pth" in msg and "face_locator.pth" in msg and "reference_unet.pth" not in msg
    assert "denoising_unet_acc.pth" in failure(base, "acc")
    root = copy("pickle")
    torch.save({"conv_in.weight": NotATensor()}, root / "face_locator.pth")
    assert "weights_only" in failure(root)
    torch.save({"conv_in.weight": 3}, root / "face_locator.pth")
    assert "bare state dict" in failure(root)
    (root / "face_locator.pth").write_bytes(b"not a checkpoint")
    assert "face_locator.pth" in failure(root)
    assert "does not exist" in failure(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        load_echomimic(base, "fast")


# ------------------------------------------------------------------------------ forward
def tiny_inputs(net, seed=1):
    cfg = net.cfg
    g = torch.Generator().manual_seed(seed)
    lat, f = cfg.latent_size, cfg.clip_frames
    x = torch.randn(1, cfg.latent_channels, f, lat, lat, generator=g).repeat(2, 1, 1, 1, 1)
    tokens = torch.randn(1, f, cfg.audio_tokens, cfg.unet.cross_attention_dim, generator=g)
    audio = torch.cat([torch.zeros_like(tokens), tokens])  # EchoMimic's CFG: [zeros; tokens]
    mask = torch.zeros(1, cfg.face_locator_in, cfg.image_size, cfg.image_size)
    mask[..., 16:48, 20:44] = 1.0
    face = net.face_locator(mask).unsqueeze(2)  # (1, C0, 1, h, w), broadcast over frames
    face = torch.cat([torch.zeros_like(face), face])
    ref = torch.randn(1, cfg.latent_channels, lat, lat, generator=g)
    return x, ref, UNetCond(audio=audio, face_feature=face, layout=ItemLayout.cfg(1, True))


@torch.no_grad()
def test_forward_smoke_with_audio_through_attn2():
    net = randomized()
    x, ref, cond = tiny_inputs(net)
    net.write_reference(ref, None)
    st = net.ref_state
    assert len(st.banks) == 16
    for bank in st.banks.values():  # one reference pass, copied to both CFG groups, rounded to fp16
        assert bank.shape[:2] == (2, 1) and bank.dtype == torch.float16 and torch.equal(bank[0], bank[1])
    assert tuple(cond.audio.shape) == (2, 4, 50, 24)  # (B, F, 50, 384-equivalent)
    out = net.denoise(x, torch.tensor(500), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # With all-zero audio tokens attn2's K/V weights do not matter (item 0); with audio they do.
    for m in net.denoising_unet.modules():
        if hasattr(m, "attn2") and m.attn2 is not None:
            m.attn2.to_k.weight.add_(1.0)
            m.attn2.to_v.weight.add_(1.0)
    moved = net.denoise(x, torch.tensor(500), cond)
    assert torch.equal(moved[0], out[0]) and (moved[1] - out[1]).abs().max() > 1e-4
    # No image context; per-frame audio is required; the reference UNet takes no context.
    with pytest.raises(ValueError):
        net.denoise(x, torch.tensor(500), dataclasses.replace(cond, context=torch.zeros(2, 1, 24)))
    with pytest.raises(ValueError):
        net.denoise(x, torch.tensor(500), dataclasses.replace(cond, audio=None))
    with pytest.raises(ValueError):
        net.write_reference(ref, torch.zeros(2, 1, 24))


@torch.no_grad()
def test_every_motion_module_runs_and_the_reference_feeds_the_conditional_half():
    def output(bump_motion=False, bump_bank=False):
        net = randomized()
        x, ref, cond = tiny_inputs(net)
        if bump_motion:  # the plain blocks' and the mid block's modules (Hallo as released skips 5)
            unet = net.denoising_unet
            for mods in (unet.down_blocks[3].motion_modules, unet.up_blocks[0].motion_modules,
                         unet.mid_block.motion_modules):
                for p in mods.parameters():
                    p.add_(0.5)
        net.write_reference(ref, None)
        if bump_bank:
            for k, bank in net.ref_state.banks.items():
                net.ref_state.banks[k] = bank + 1.0
        return net.denoise(x, torch.tensor(500), cond)

    base = output()
    assert len(randomized().denoising_unet.mid_block.motion_modules) == 1
    assert (output(bump_motion=True) - base).abs().max() > 1e-5
    banked = output(bump_bank=True)
    assert torch.equal(banked[0], base[0]) and (banked[1] - base[1]).abs().max() > 1e-5


@torch.no_grad()
def test_zero_audio_makes_attn2_add_exactly_ratio_times_its_output_bias():
    """echomimic_memo.md §1.2 point 3: with zero audio tokens and bias-free K/V, attention returns 0,
    so attn2 adds 3.0 * to_out.0.bias, and the block is attn1 -> + 3b -> ff, by hand."""
    net = randomized()
    blk = net.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0]
    a = blk.attn2
    assert a.to_k.bias is None and a.to_v.bias is None and a.to_k.weight.shape == (16, 24)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(6, 64, 16, generator=g)
    zeros = torch.zeros(6, 50, 24)
    bias3 = 3.0 * a.to_out[0].bias
    assert torch.equal(a(blk.norm2(h), encoder_hidden_states=zeros), bias3.expand(6, 64, 16))
    h1 = blk.attn1(blk.norm1(h)) + h
    h2 = h1 + bias3
    assert torch.equal(blk(h, encoder_hidden_states=zeros), blk.ff(blk.norm3(h2)) + h2)
    # The ratio is a switch: at 1.0 the same block adds the bias once.
    one = build_net(TINY_ECHO.replace(unet=dataclasses.replace(TINY_ECHO.unet, spatial_context_scale=1.0)))
    one.load_state_dict(net.state_dict())
    a1 = one.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert torch.equal(a1(blk.norm2(h), encoder_hidden_states=zeros), a.to_out[0].bias.expand(6, 64, 16))
