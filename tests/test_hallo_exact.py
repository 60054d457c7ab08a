"""Hallo's reference reader reproduced exactly (issue 13): frame-tiled reference groups and banks
rounded to fp16, both model-config switches (on for ``hallo``, off for ``small``/``tiny``).

What a frame must read is computed here with Hallo's own tensor operations in plain torch (a bank
of (b s) rows viewed with b = the call's items, slot s=0 taken as a 3-D tensor and ``.repeat(1, F,
1, 1)``'d, as in hallo/models/mutual_self_attention.py at 8fd7c57), not with our layout code."""

import dataclasses
import math

import pytest
import torch
from diffusers.models.attention_processor import Attention
from tiny_pipeline import DEGENERATE, generated_frames, randomized_tiny_pipeline, tone_inputs

from talkfast.accelerators import (
    DFA,
    AccelConfig,
    CachingConfig,
    DFAConfig,
    KeySchedule,
    LightningCP,
    ReferenceRemoval,
    build_accelerator,
)
from talkfast.io.audio import Audio
from talkfast.models.attention import ItemLayout, ReferenceReadProcessor, ReferenceState
from talkfast.models.config import HALLO, SMALL, TINY
from talkfast.models.net import build_net
from talkfast.models.unet import UNetCond
from talkfast.pipeline.generate import GenerateOptions, TalkingHeadPipeline, half_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_switches(cfg, tile=True, fp16=True):
    return cfg.replace(unet=dataclasses.replace(cfg.unet, tile_reference_groups=tile, fp16_reference_banks=fp16))


HALLO_TINY = with_switches(TINY)


def hallo_rows(bank: torch.Tensor, frames: int, batch: int) -> torch.Tensor:
    """The (batch*frames, L, C) reference rows Hallo's reader concatenates to its frame-rows: the
    (b*s, L, C) bank viewed as (b, s, L, C) with b = ``batch``, slot 0, repeated as a 3-D tensor."""
    per_item = bank.reshape(batch, bank.shape[0] // batch, *bank.shape[1:])[:, 0]  # (B, L, C)
    return per_item.repeat(1, frames, 1, 1).reshape(batch * frames, *bank.shape[1:])


def test_switches_are_on_for_hallo_only():
    assert HALLO.unet.tile_reference_groups and HALLO.unet.fp16_reference_banks
    for cfg in (SMALL, TINY):
        assert not cfg.unet.tile_reference_groups and not cfg.unet.fp16_reference_banks
    st = build_net(HALLO, device="meta").ref_state
    assert st.tile_frames and st.bank_dtype == torch.float16
    st.clear()  # clearing the banks keeps the model's switches
    assert st.tile_frames and st.bank_dtype == torch.float16


@pytest.mark.parametrize("frames", [3, 4, 16])
def test_frame_group_map_is_hallos_tiling(frames):
    s = 3  # reference + 2 motion frames per group
    ids = torch.arange(2).repeat_interleave(s).view(2 * s, 1, 1)  # bank row -> its group, group-major
    hallo = tuple(hallo_rows(ids, frames, 2).flatten().tolist())  # one CFG step: items [uncond, cond]
    per_item = (hallo[:frames], hallo[frames:])
    assert ItemLayout.cfg(1, True).frame_groups(frames, True) == per_item
    if frames % 2 == 0:  # the conditional item's frames alternate: even frames read the uncond group
        assert per_item[1] == (0, 1) * (frames // 2)
    # several steps in one call (batched shallow path), one CFG half on its own (--parallel cfg,
    # guidance reuse): every item reads what it reads in the one-step CFG call
    assert ItemLayout.cfg(3, True).frame_groups(frames, True) == (per_item[0],) * 3 + (per_item[1],) * 3
    assert half_layout(2, (1,), True).frame_groups(frames, True) == (per_item[1],) * 2
    assert half_layout(1, (0,), True).frame_groups(frames, True) == (per_item[0],)
    # without CFG Hallo's call has one item: every frame reads it (our conditional group 1)
    one = hallo_rows(torch.ones(s, 1, 1, dtype=torch.long), frames, 1).flatten().tolist()
    assert half_layout(2, (1,), False).frame_groups(frames, True) == (tuple(one),) * 2
    # switched off: every frame reads its item's group
    assert ItemLayout.cfg(2, True).frame_groups(frames, False) == ((0,) * frames,) * 2 + ((1,) * frames,) * 2


def plain_mha(attn: Attention, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``x`` to ``kv`` with the module's weights, in plain torch."""
    h = attn.heads
    q, k, v = x @ attn.to_q.weight.T, kv @ attn.to_k.weight.T, kv @ attn.to_v.weight.T

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return o @ attn.to_out[0].weight.T + attn.to_out[0].bias


@pytest.mark.parametrize("frames", [3, 4])
@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dfa_tokens", [False, True])
@torch.no_grad()
def test_reader_attends_to_the_tiled_reference_group(frames, tiled, dfa_tokens):
    """One reference-reading self-attention, CFG batch [uncond, cond] of ``frames`` frames each."""
    g = torch.Generator().manual_seed(1)
    c, length, s = 8, 6, 3
    attn = Attention(c, heads=2, dim_head=c // 2, bias=False, out_bias=True).double()
    for p in attn.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    bank = torch.randn(2, s, length, c, generator=g, dtype=torch.float64)  # (G, S, L, C)
    st = ReferenceState(tile_frames=tiled)
    st.mode, st.num_frames, st.layout, st.banks["k"] = "read", frames, ItemLayout.cfg(1, True), bank
    proc = ReferenceReadProcessor(st, "k")
    n = torch.randn(2 * frames, length, c, generator=g, dtype=torch.float64)
    if tiled:  # Hallo: frame-row r reads group r mod 2
        rows = hallo_rows(bank.reshape(2 * s, length, c), frames, 2)
    else:  # every frame of the conditional item reads the conditional group
        rows = bank[:, 0].repeat_interleave(frames, 0)
    if dfa_tokens:  # DFA's shallow calls: only some tokens, attending to those reference tokens only
        keep = torch.tensor([0, 2, 3])
        proc.token_index, n, rows = keep, n[:, keep], rows[:, keep]
    out = proc(attn, n)
    expected = plain_mha(attn, n, torch.cat([n, rows], dim=1))
    expected[:frames] = plain_mha(attn, n[:frames], n[:frames])  # Hallo recomputes the uncond half without reference
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the motion-frame slots stay per item: item i reads group i
    torch.testing.assert_close(st.motion["k"], bank[:, 1:], rtol=0, atol=0)


def randomized(cfg, seed=0, dtype=torch.float32):
    net = build_net(cfg, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def call_inputs(cfg, seed=3):
    """Latents (1, ...) and the conditioning of each CFG half (batch 1)."""
    g = torch.Generator().manual_seed(seed)
    lat, f = cfg.latent_size, cfg.clip_frames
    levels = [lat // 2**i for i in range(cfg.unet.num_levels)]
    x = torch.randn(1, cfg.latent_channels, f, lat, lat, generator=g)
    halves = [dict(context=torch.randn(1, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g),
                   audio=torch.randn(1, f, cfg.audio_tokens, cfg.unet.audio_attention_dim, generator=g),
                   masks=tuple([torch.rand(1, s * s, generator=g) for s in levels] for _ in range(3)),
                   face_feature=torch.randn(1, cfg.unet.block_out_channels[0], 1, lat, lat, generator=g))
              for _ in range(2)]
    return x, halves


def cast(half: dict, dtype) -> dict:
    return {k: v.to(dtype) if torch.is_tensor(v) else tuple([m.to(dtype) for m in kind] for kind in v)
            for k, v in half.items()}


def cond_of(halves, items, layout):
    """UNetCond for ``items`` (a list of CFG halves, one per batch item)."""
    cat = lambda k: torch.cat([halves[h][k] for h in items])  # noqa: E731
    levels = range(len(halves[0]["masks"][0]))
    masks = tuple([torch.cat([halves[h]["masks"][kind][lvl] for h in items]) for lvl in levels] for kind in range(3))
    return UNetCond(context=cat("context"), audio=cat("audio"), masks=masks, face_feature=cat("face_feature"),
                    layout=layout)


def write_reference(net, seed=2):
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    ref = torch.randn(1 + cfg.motion_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    ctx = torch.randn(2, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g)
    net.write_reference(ref.to(net.dtype), ctx.to(net.dtype))


@torch.no_grad()
def test_split_halves_and_batched_steps_read_the_groups_of_the_cfg_call():
    """What --parallel cfg (one half per process), guidance reuse (the conditional half alone) and a
    batched shallow call (several steps per call) run: each item equals its item of the one-step
    CFG call, so the conditional half reads the unconditional reference group too."""
    net = randomized(HALLO_TINY).double()
    write_reference(net)
    x, halves = call_inputs(net.cfg)
    x, t, halves = x.double(), torch.tensor([600]), [cast(h, torch.float64) for h in halves]
    full = net.denoise(torch.cat([x, x]), torch.cat([t, t]), cond_of(halves, [0, 1], half_layout(1, (0, 1))))
    cond = net.denoise(x, t, cond_of(halves, [1], half_layout(1, (1,), True)))
    uncond = net.denoise(x, t, cond_of(halves, [0], half_layout(1, (0,), True)))
    torch.testing.assert_close(cond, full[1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(uncond, full[:1], rtol=1e-10, atol=1e-10)
    x2, t2 = torch.randn_like(x), torch.tensor([300])
    two = net.denoise(torch.cat([x, x2, x, x2]), torch.cat([t, t2, t, t2]),
                      cond_of(halves, [0, 0, 1, 1], half_layout(2, (0, 1))))
    torch.testing.assert_close(two[0::2], full, rtol=1e-10, atol=1e-10)
    # a run without guidance reads the conditional group in every frame: a different result
    alone = net.denoise(x, t, cond_of(halves, [1], half_layout(1, (1,), False)))
    assert (alone - cond).abs().max() > 1e-6


@torch.no_grad()
def test_banks_are_rounded_to_fp16_and_read_in_the_compute_dtype():
    """fp64 model (round-off far below fp16's): the banks are the fp16 roundings of the exact ones,
    and the output is the exact network's fed those rounded values in fp64."""
    on = randomized(HALLO_TINY).double()
    exact = randomized(with_switches(TINY, fp16=False)).double()  # same weights, banks in the model dtype
    write_reference(on)
    write_reference(exact)
    assert on.ref_state.banks.keys() == exact.ref_state.banks.keys()
    for k, bank in on.ref_state.banks.items():
        assert bank.dtype == torch.float16 and exact.ref_state.banks[k].dtype == torch.float64
        torch.testing.assert_close(bank, exact.ref_state.banks[k].to(torch.float16), rtol=0, atol=0)
    x, halves = call_inputs(on.cfg)
    halves = [cast(h, torch.float64) for h in halves]
    x = x.double()
    args = (torch.cat([x, x]), torch.tensor([600, 600]), cond_of(halves, [0, 1], half_layout(1, (0, 1))))
    out = on.denoise(*args)
    assert out.dtype == torch.float64
    unrounded = exact.denoise(*args)
    assert (out - unrounded).abs().max() > 1e-9  # the rounding shows, far above fp64 round-off
    for k, bank in exact.ref_state.banks.items():  # fp16-rounded values, cast back by the reader
        exact.ref_state.banks[k] = bank.to(torch.float16).to(torch.float64)
    torch.testing.assert_close(exact.denoise(*args), out, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_fp16_banks_in_half_precision_models(dtype):
    net = randomized(HALLO_TINY, dtype=dtype)
    write_reference(net)
    assert all(b.dtype == torch.float16 for b in net.ref_state.banks.values())
    x, halves = call_inputs(net.cfg)
    halves = [cast(h, dtype) for h in halves]
    layout = half_layout(1, (0, 1))
    out = net.denoise(torch.cat([x, x]).to(dtype), torch.tensor([600, 600]), cond_of(halves, [0, 1], layout))
    assert out.dtype == dtype and torch.isfinite(out).all()


# ------------------------------------------------------------------ the pipeline and its accelerators
def hallo_reader_pipeline(pipe, tile=True, fp16=True):
    """``pipe``'s randomized tiny network rebuilt with the switches (same weights). Its reference
    groups are made to differ strongly: in the random tiny network the unconditional and the
    conditional image context hardly change what the ReferenceNet writes, so a frame reading the
    wrong group would go unseen; here group 0 is written negated."""
    net = build_net(with_switches(pipe.net.cfg, tile, fp16))
    net.load_state_dict(pipe.net.state_dict())
    write = net.write_reference

    def write_reference(*args, **kw):
        write(*args, **kw)
        for k, bank in net.ref_state.banks.items():
            net.ref_state.banks[k] = torch.cat([-bank[:1], bank[1:]])

    net.write_reference = write_reference
    return TalkingHeadPipeline(net, pipe.vae, pipe.audio, device="cpu", dtype=torch.float32, identity="pixels",
                               source="random:tiny+hallo-reader")


@pytest.fixture(scope="module")
def plain_pipe():
    return randomized_tiny_pipeline()


@pytest.fixture(scope="module")
def pipe(plain_pipe):
    return hallo_reader_pipeline(plain_pipe)


@pytest.fixture(scope="module")
def inputs():
    return tone_inputs(0.5)  # 13 frames: 4 clips of the tiny model


run = generated_frames


@pytest.fixture(scope="module")
def baseline(pipe, inputs):
    return run(pipe, inputs)


def test_switches_change_the_tiny_pipelines_video(plain_pipe, inputs, baseline):
    off = run(hallo_reader_pipeline(plain_pipe, False, False), inputs)
    assert (off - baseline).abs().max() > 1e-3


@torch.no_grad()
def test_predictor_halves_read_the_groups_of_the_cfg_call(pipe, inputs):
    """The pipeline's raw per-half output (what --parallel cfg runs on each process and guidance
    reuse runs for the conditional half) equals that half of the batched CFG call."""
    img, audio = inputs
    por = pipe.portrait(img)
    pc = pipe.portrait_conditioning(por)
    f = pipe.cfg.clip_frames
    pipe.net.write_reference(torch.cat([pipe.encode(por.pixels[None])] * 3), pc["context"])
    try:
        tokens = pipe.net.audioproj(pipe.audio.clip(audio, 0, f, fps=25)[None])
        predict = pipe.make_predictor(pc, tokens, 2.0, (1.0, 1.0, 1.0))
        lat = torch.randn(2, pipe.cfg.latent_channels, f, pipe.cfg.latent_size, pipe.cfg.latent_size,
                          generator=torch.Generator().manual_seed(5))
        t = torch.tensor([700, 500])
        both = predict.model_output(lat, t, None, (0, 1))
        for h in (0, 1):
            torch.testing.assert_close(predict.model_output(lat, t, None, (h,)), both[2 * h : 2 * h + 2],
                                       rtol=0, atol=1e-6)
        unguided = pipe.make_predictor(pc, tokens, 1.0, (1.0, 1.0, 1.0))  # every frame reads group 1
        assert (unguided.model_output(lat, t, None, (1,)) - both[2:]).abs().max() > 1e-3
    finally:
        pipe.net.clear_reference()


class AllForegroundDFA(DFA):
    def begin(self, pipeline, portrait):
        super().begin(pipeline, None)  # regions None -> every token is foreground


@pytest.mark.parametrize("cfg", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_every_step_a_key_step_equals_the_baseline(pipe, inputs, baseline, cfg):
    acc = build_accelerator(cfg)
    torch.testing.assert_close(run(pipe, inputs, acc), baseline, rtol=0, atol=0)
    assert acc.summary()["reduced_steps"] == 0


def test_degenerate_plugins_equal_lightningcp(pipe, inputs):
    """An all-foreground DFA mask and an empty reference-removal list change nothing in the reduced
    calls (where DFA reads its background cache per reference group)."""
    cfg = CachingConfig(keys=KeySchedule("uniform", interval=3))
    plain = run(pipe, inputs, LightningCP(cfg))
    acc = LightningCP(cfg)
    acc.plugins = [AllForegroundDFA(DFAConfig(temporal=True))]
    torch.testing.assert_close(run(pipe, inputs, acc), plain, rtol=1e-5, atol=1e-6)
    acc = LightningCP(cfg)
    acc.plugins = [ReferenceRemoval(())]
    torch.testing.assert_close(run(pipe, inputs, acc), plain, rtol=0, atol=0)
    batched_one_by_one = run(pipe, inputs, LightningCP(dataclasses.replace(cfg, chunk=1)))
    torch.testing.assert_close(batched_one_by_one, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_unet_does_not_recompile_with_tiled_groups(pipe, inputs):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    unet = pipe.net.denoising_unet
    unet.forward = torch.compile(unet.forward, backend="eager", dynamic=False)
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=4))))
    try:
        img, audio = inputs
        short = Audio(audio.samples[: 16000 * 4 // 25], 16000, 16000, 1)  # one 4-frame clip
        pipe.generate(img, short, None, GenerateOptions(steps=8), accelerator=acc)
        after_first = counters["stats"]["unique_graphs"]
        two = Audio(audio.samples[: 16000 * 8 // 25], 16000, 16000, 1)  # two clips, more steps
        pipe.generate(img, two, None, GenerateOptions(steps=12), accelerator=acc)
        assert after_first == 2 and counters["stats"]["unique_graphs"] == after_first
    finally:
        del unet.forward
        torch._dynamo.reset()
        acc.detach()


# ------------------------------------------------------------------ --parallel cfg (torchrun, 2 CPU processes)
PARALLEL_KINDS = (None, "lightningcp")  # plain CFG split, and LightningCP's per-half caches


def parallel_worker(out: str) -> None:
    """torchrun entry (``__main__``): every rank runs the CFG split of each case; frames to OUT.rankN."""
    import torch.distributed as dist
    from test_parallel import run as parallel_run

    from talkfast.parallel.distributed import ParallelRun, StepSplitter

    torch.set_num_threads(1)
    par = ParallelRun.from_env("cfg", "cpu")
    pipe = hallo_reader_pipeline(randomized_tiny_pipeline())
    frames = {str(kind): parallel_run(pipe, kind, StepSplitter("cfg", pipe).wrap) for kind in PARALLEL_KINDS}
    torch.save(frames, f"{out}.rank{dist.get_rank()}")
    par.close()


@pytest.mark.slow
def test_parallel_cfg_gives_each_frame_its_group(pipe, tmp_path):
    """--parallel cfg with the switches on: the conditional process's frames still read the
    unconditional reference group where Hallo's tiling says so (the conditional half split off
    with every frame reading the conditional group moves these frames by 5e-3, measured in one
    process: far above the tolerance)."""
    from test_parallel import run as parallel_run
    from test_parallel import torchrun

    out = tmp_path / "frames.pt"
    r = torchrun([__file__, str(out)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for kind in PARALLEL_KINDS:
        single = parallel_run(pipe, kind)
        for rank in range(2):
            got = torch.load(f"{out}.rank{rank}")[str(kind)]
            torch.testing.assert_close(got, single, rtol=0, atol=1e-5, msg=lambda m, r=rank: f"rank {r}: {m}")


if __name__ == "__main__":
    import sys

    parallel_worker(sys.argv[1])
