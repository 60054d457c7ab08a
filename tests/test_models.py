"""Model structure and numerics: Hallo key layout, strict loading, reference attention, the
released-behaviour switches, per-item timesteps and the stage executor."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from talkfast.errors import CheckpointError
from talkfast.models.attention import ItemLayout
from talkfast.models.config import HALLO, TINY
from talkfast.models.loading import load_net_weights, read_state_dict
from talkfast.models.net import build_net
from talkfast.models.unet import StagePlan, UNetCond

# Every key and shape of Hallo's released net.pth (a copy of ../shared/reference/hallo_net_keys.json,
# kept in the repository so that the check runs in any checkout).
KEYS = Path(__file__).resolve().parent / "data" / "hallo_net_keys.json"
SHARED_KEYS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hallo_net_keys.json"


def hallo_reference_keys() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads(KEYS.read_text())["keys"].items()}


def test_key_list_is_the_shared_reference():
    if not SHARED_KEYS.exists():
        pytest.skip(f"{SHARED_KEYS} not present (the repository copy is used)")
    assert json.loads(KEYS.read_text()) == json.loads(SHARED_KEYS.read_text())


def test_hallo_preset_has_exactly_the_released_keys_and_shapes():
    net = build_net(HALLO, device="meta")
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ref = hallo_reference_keys()
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    # Parameter counts from hallo_family.md §3 (denoising ~1525.5 M, reference ~859.5 M incl. no head).
    n_den = sum(p.numel() for p in net.denoising_unet.parameters())
    assert abs(n_den / 1e6 - 1525.5) < 1.0


def test_hallo_state_dict_loads_strict_and_reports_mismatches():
    ref = hallo_reference_keys()
    state = {k: torch.empty(v, device="meta") for k, v in ref.items()}
    net = build_net(HALLO, device="meta")
    net.load_state_dict(state, strict=True, assign=True)
    # Our loader: same dict passes; a missing, an unexpected and a mis-shaped key are all named.
    load_net_weights(build_net(HALLO, device="meta"), state)
    broken = dict(state)
    broken.pop("audioproj.proj1.weight")
    broken["denoising_unet.extra.weight"] = torch.empty(1, device="meta")
    broken["imageproj.proj.weight"] = torch.empty(3072, 256, device="meta")
    with pytest.raises(CheckpointError) as err:
        load_net_weights(build_net(HALLO, device="meta"), broken, "net.pth")
    msg = str(err.value)
    assert "audioproj.proj1.weight" in msg and "denoising_unet.extra.weight" in msg and "imageproj.proj.weight" in msg


def test_read_state_dict_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "net.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_state_dict(bad)


def randomized(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    net = build_net(cfg)
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised layers would hide wiring mistakes
            p.normal_(0, 0.1)
    return net


def inputs(net, items: int = 2, cfg_layout=True, seed=1):
    cfg = net.cfg
    g = torch.Generator().manual_seed(seed)
    lat, f = cfg.latent_size, cfg.clip_frames
    levels = [lat // 2**i for i in range(cfg.unet.num_levels)]
    n = items
    ctx = torch.randn(n, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g)
    audio = torch.randn(n, f, cfg.audio_tokens, cfg.unet.audio_attention_dim, generator=g)
    masks = tuple([torch.rand(n, s * s, generator=g) for s in levels] for _ in range(3))
    face = torch.randn(n, cfg.unet.block_out_channels[0], 1, lat, lat, generator=g)
    layout = ItemLayout.cfg(n // 2, True) if cfg_layout else ItemLayout.cfg(n, False)
    x = torch.randn(n, cfg.latent_channels, f, lat, lat, generator=g)
    return x, UNetCond(context=ctx, audio=audio, masks=masks, face_feature=face, layout=layout)


def write_ref(net, seed=2):
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    ref = torch.randn(1 + cfg.motion_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    ctx = torch.randn(2, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g)
    net.write_reference(ref, ctx)


def select(cond: UNetCond, idx: list[int]) -> UNetCond:
    pick = lambda t: t[idx]  # noqa: E731
    layout = ItemLayout(tuple(cond.layout.group[i] for i in idx), tuple(cond.layout.use_ref[i] for i in idx))
    return UNetCond(context=pick(cond.context), audio=pick(cond.audio),
                    masks=tuple([pick(m) for m in kind] for kind in cond.masks),
                    face_feature=pick(cond.face_feature), layout=layout, motion_scale=cond.motion_scale)


@torch.no_grad()
def test_reference_bank_layout_and_cfg_semantics():
    net = randomized()
    write_ref(net)
    st = net.ref_state
    assert st.mode == "read" and len(st.banks) == 16  # Hallo pairs 16 writers with 16 readers
    key = "down_blocks.0.attentions.0"
    cfg = net.cfg
    assert st.banks[key].shape == (2, 1 + cfg.motion_frames, cfg.latent_size**2, cfg.unet.block_out_channels[0])
    x, cond = inputs(net)
    base = net.denoise(x, torch.tensor([500, 500]), cond)
    # The reference image (bank[:, 0]) feeds only the conditional half; motion frames feed both.
    for k in st.banks:
        st.banks[k] = st.banks[k].clone()
        st.banks[k][:, 0] += torch.randn_like(st.banks[k][:, 0])
    moved = net.denoise(x, torch.tensor([500, 500]), cond)
    torch.testing.assert_close(moved[0], base[0], rtol=0, atol=0)
    assert (moved[1] - base[1]).abs().max() > 1e-5
    for k in st.banks:  # (a constant shift would vanish in the motion module's GroupNorm)
        st.banks[k][:, 1:] += torch.randn_like(st.banks[k][:, 1:])
    moved2 = net.denoise(x, torch.tensor([500, 500]), cond)
    assert (moved2[0] - base[0]).abs().max() > 1e-5


@torch.no_grad()
def test_batched_items_with_their_own_timesteps_equal_separate_calls():
    net = randomized()
    write_ref(net)
    x, cond = inputs(net, items=4)  # [uncond, uncond, cond, cond]
    t = torch.tensor([900, 300, 900, 300])
    both = net.denoise(x, t, cond)
    for i in range(4):
        one = net.denoise(x[i : i + 1], t[i : i + 1], select(cond, [i]))
        torch.testing.assert_close(both[i : i + 1], one, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_plain_block_motion_modules_follow_the_released_switch():
    def output(run_plain: bool, bump: bool):
        unet_cfg = dataclasses.replace(TINY.unet, run_plain_block_motion=run_plain)
        net = randomized(TINY.replace(unet=unet_cfg))
        if bump:
            for mod in (net.denoising_unet.down_blocks[3].motion_modules, net.denoising_unet.up_blocks[0].motion_modules):
                for p in mod.parameters():
                    p.add_(0.5)
        write_ref(net)
        x, cond = inputs(net)
        return net.denoise(x, torch.tensor([500, 500]), cond)

    # Hallo as released: those weights exist but are never run.
    torch.testing.assert_close(output(False, False), output(False, True), rtol=0, atol=0)
    assert (output(True, False) - output(True, True)).abs().max() > 1e-5


@torch.no_grad()
def test_items_do_not_see_each_others_audio():
    """Each batch item attends only to its own audio tokens (the CFG halves stay separate)."""
    net = randomized()
    write_ref(net)
    x, cond = inputs(net)
    base = net.denoise(x, torch.tensor([500, 500]), cond)
    cond.audio = cond.audio.clone()
    cond.audio[1] += 1.0
    moved = net.denoise(x, torch.tensor([500, 500]), cond)
    torch.testing.assert_close(moved[0], base[0], rtol=0, atol=0)
    assert (moved[1] - base[1]).abs().max() > 1e-5


class CutPlan(StagePlan):
    """Runs stages [0, d) and [u, end), replacing the hidden state at stage u with ``h``."""

    def __init__(self, d, u, h):
        self.d, self.u, self.h = d, u, h

    def active(self, index, stage):
        return index < self.d or index >= self.u

    def before(self, index, stage, state):
        if index == self.u:
            state.h = self.h


class CapturePlan(StagePlan):
    def __init__(self, u):
        self.u, self.h = u, None

    def before(self, index, stage, state):
        if index == self.u:
            self.h = state.h.clone()


@torch.no_grad()
@pytest.mark.parametrize("branch", [0, 1, 3])
def test_stage_plan_can_cut_the_network_exactly(branch):
    """A plan that captures the deep feature entering a late up layer, then re-runs only the
    shallow path around it, reproduces the full output (the mechanism LightningCP uses)."""
    net = randomized()
    write_ref(net)
    unet = net.denoising_unet
    names = [s.name for s in unet.stages]
    n_up = len([s for s in names if s.startswith("up.") and not s.endswith("sample")])
    up_layers = [i for i, s in enumerate(names) if s.startswith("up.") and not s.endswith("sample")]
    u = up_layers[n_up - 1 - branch]
    pushes = [i for i, s in enumerate(names) if s == "conv_in" or s.startswith("down.")]
    d = pushes[branch] + 1  # shallow down path: the first branch+1 skip-producing stages
    x, cond = inputs(net)
    t = torch.tensor([500, 500])
    cap = CapturePlan(u)
    full = net.denoise(x, t, cond, cap)
    cut = net.denoise(x, t, cond, CutPlan(d, u, cap.h))
    torch.testing.assert_close(cut, full, rtol=0, atol=0)
    wrong = net.denoise(x, t, cond, CutPlan(d, u, cap.h + 0.1))
    assert (wrong - full).abs().max() > 1e-4


def test_time_embedding_rejects_wrong_timestep_shape():
    net = randomized()
    with pytest.raises(ValueError):
        net.denoising_unet.embed_time(torch.tensor([1, 2, 3]), 2, torch.float32)
