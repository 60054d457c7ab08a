"""MEMO (issue 16; memoavatar/memo at a5aee30, shared/reference/echomimic_memo.md §2) in the one
module tree: every key and shape of its released folders on ``meta``, its memory motion modules
against a plain re-computation of MEMO's in-call memory update, rectified-flow Euler against
diffusers' own step, a MEMO-layout folder (tiny width, written here) loaded with MEMO's
strictness and generating an mp4, and the accelerators on it (degenerate settings exact, the cut
check with the carried audio stream)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file
from tiny_pipeline import DEGENERATE, generated_frames, tone_inputs

import talkfast.models.memo_checkpoint as memo_checkpoint
from talkfast.accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule, build_accelerator
from talkfast.accelerators.base import CapturePlan, ShallowPlan
from talkfast.accelerators.caching import LightningCP
from talkfast.errors import CheckpointError
from talkfast.io.video import probe_video
from talkfast.models import loading
from talkfast.models.attention import ItemLayout
from talkfast.models.config import MEMO, MEMO_TINY
from talkfast.models.layers import MotionModule
from talkfast.models.memo_layers import remember_frames, use_memory_attention
from talkfast.models.net import build_net
from talkfast.models.unet import UNetCond
from talkfast.pipeline.conditioning import AudioConditioner
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.memo import MemoPipeline, emotion_index
from talkfast.sampling.scheduler import input_timestep, make_scheduler, noise_to, scheduler_step, split_prediction

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
KEYS = Path(__file__).resolve().parent / "data" / "memo_keys.json"  # a copy of the shared reference
SHARED_KEYS = ROOT.parent / "shared" / "reference" / "memo_keys.json"
MANIFEST = json.loads(KEYS.read_text())
PORTRAIT = ROOT / "src/talkfast/assets/examples/portrait.png"
FOLDERS = {"reference_unet": "reference_net", "denoising_unet": "diffusion_net", "imageproj": "image_proj",
           "audioproj": "audio_proj"}


def test_key_list_is_the_shared_reference():
    if not SHARED_KEYS.is_file():
        pytest.skip("../shared/reference is not in this checkout")
    assert json.loads(SHARED_KEYS.read_text()) == MANIFEST


def test_memo_preset_has_every_key_and_shape_of_the_released_folders():
    net = build_net(MEMO, device="meta")
    for child, folder in FOLDERS.items():
        entry = MANIFEST["files"][f"{folder}/diffusion_pytorch_model.safetensors"]
        want = {k: tuple(v) for k, v in entry["keys"].items()}
        module = getattr(net, child)
        got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert got == want, folder
        assert sum(v.numel() for v in module.state_dict().values()) == entry["n_params"], folder
    assert net.face_locator is None
    assert len(net.memory_modules()) == 21  # every motion module, the plain blocks' and the mid block's too


# ---------------------------------------------------------------------------------------- memory
def _memo_memory_module(module: MotionModule, hidden, motion, memory: list[dict], new_audio: bool, update: bool):
    """MEMO's memory motion module as its code reads (memo/models/motion_module.py and
    ``MemoryLinearAttnProcessor``), re-computed in plain torch: hidden (b, c, f, h, w), past frames
    (b, c, m, h, w) through the module's GroupNorm and proj_in and each block's LayerNorm (never its
    attention); the memory kept in ``memory`` (one dict per attention block), reset when
    ``new_audio``, updated when ``new_audio or update``, frame j of m weighted 0.9 ** (m - 1 - j)."""
    tt = module.temporal_transformer
    b, c, f, h, w = hidden.shape
    m = motion.shape[2]

    def tokens(x, n):  # (b, c, n, h, w) -> (b*n, h*w, c) after GroupNorm (per frame) and proj_in
        x = tt.norm(x.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w))
        return tt.proj_in(x.permute(0, 2, 3, 1).reshape(b * n, h * w, c))

    def per_pixel(x, n):  # (b*n, hw, c) -> (b*hw, n, c)
        return x.reshape(b, n, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, n, c)

    def heads(x, k):  # (r, n, k*d) -> (r*k, n, d)
        r, n, _ = x.shape
        return x.reshape(r, n, k, -1).permute(0, 2, 1, 3).reshape(r * k, n, -1)

    residual = hidden.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    x, mf = tokens(hidden, f), tokens(motion, m)
    block = tt.transformer_blocks[0]
    for attn, norm, mem in zip(block.attention_blocks, block.norms, memory):
        k_heads = attn.heads
        xin = attn.pos_encoder.pe[:, :f] + per_pixel(norm(x), f)
        min_ = per_pixel(norm(mf), m)
        q = torch.softmax(heads(attn.to_q(xin), k_heads), dim=-1) * attn.scale
        key = torch.softmax(heads(attn.to_k(xin), k_heads), dim=-2)
        val = heads(attn.to_v(xin), k_heads)
        mk = torch.softmax(heads(attn.to_k(min_), k_heads), dim=-2)
        mv = heads(attn.to_v(min_), k_heads)
        if new_audio:
            mem.clear()
        if new_audio or update:
            weight = [0.9 ** (m - 1 - j) for j in range(m)]  # both the keys and the values are weighted
            kv_new = sum((weight[j] * mk[:, j, :, None]) * (weight[j] * mv[:, j, None, :]) for j in range(m))
            z_new = sum(weight[j] * mk[:, j] for j in range(m))[:, None, :]
            if not mem:
                mem.update(kv=kv_new, z=z_new)
            else:
                mem.update(kv=mem["kv"] * 0.9 ** m + kv_new, z=mem["z"] * 0.9 ** m + z_new)
        kv = 0.9 * mem["kv"] + key.transpose(1, 2) @ val
        z = 0.9 * mem["z"] + key.sum(dim=1, keepdim=True)
        out = (q @ kv) / (q @ z.transpose(1, 2)).clamp(min=1e-10)
        r = out.shape[0] // k_heads
        out = attn.to_out[0](out.reshape(r, k_heads, f, -1).permute(0, 2, 1, 3).reshape(r, f, -1))
        x = out.reshape(b, h * w, f, c).permute(0, 2, 1, 3).reshape(b * f, h * w, c) + x
    x = block.ff(block.ff_norm(x)) + x
    out = tt.proj_out(x).reshape(b * f, h, w, c).permute(0, 3, 1, 2) + residual
    return out


def test_memory_updated_once_per_clip_equals_memos_in_call_update():
    """MEMO updates the memory inside its denoising calls: at every call of the first clip (reset,
    then rebuilt from the same past frames) and at step 0 of the others. talkfast updates it once
    per clip before the calls; every call then reads it. Two clips of three calls each, both CFG
    groups in one call, then one group's item alone (as a reduced call of one CFG half reads it)."""
    torch.manual_seed(0)
    c, heads, f, m, side = 8, 2, 3, 4, 2
    module = MotionModule(c, heads, 8, 4)
    use_memory_attention(module, "a.key")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    memory = [{}, {}]
    for clip in range(2):
        past = torch.randn(2, c, m, side, side)
        bank = past.permute(0, 2, 3, 4, 1).reshape(2, m, side * side, c)  # (G, M, L, C), as the writer keeps them
        remember_frames(module, bank, reset=clip == 0)
        for step in range(3):
            hidden = torch.randn(2, c, f, side, side)
            want = _memo_memory_module(module, hidden, past, memory, new_audio=clip == 0, update=step == 0)
            flat = hidden.permute(0, 2, 1, 3, 4).reshape(2 * f, c, side, side)
            got = module(flat, f, memory_groups=(0, 1))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            alone = module(flat[f:], f, memory_groups=(1,))  # the conditional item by itself
            torch.testing.assert_close(alone, want[f:], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- sampler
def test_flow_euler_is_diffusers_step_and_the_estimate_is_its_straight_line():
    sched = make_scheduler(20, kind="flow")
    torch.testing.assert_close(sched.timesteps, torch.linspace(1000, 1, 20))  # MEMO's 20 steps
    ref = FlowMatchEulerDiscreteScheduler()
    ref.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 2, 4, 4, generator=g)
    mine = z.clone()
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(z.shape, generator=g)
        z = ref.step(v, t, z).prev_sample
        mine = scheduler_step(sched, v, i, mine)
        torch.testing.assert_close(mine, z, rtol=0, atol=0)
    # with a constant velocity, chained Euler steps follow x0 + sigma * (eps - x0): the estimate of
    # every later step's input from the prediction at step k
    k, v = 3, torch.randn(z.shape, generator=g)
    zk = torch.randn(z.shape, generator=g)
    x0, eps = split_prediction(sched, v, zk, sched.timesteps[k])
    torch.testing.assert_close(eps - x0, v)
    chained = zk
    for j in range(k, 12):
        chained = scheduler_step(sched, v, j, chained)
        torch.testing.assert_close(noise_to(sched, x0, eps, input_timestep(sched, j + 1)), chained, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- a MEMO folder
def _write_memo_folder(root: Path, net) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    for child, folder in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in getattr(net, child).state_dict().items()},
                  str(root / folder / "diffusion_pytorch_model.safetensors"))
        (root / folder / "config.json").write_text("{}")
    AutoencoderKL(**loading.small_vae_config(MEMO_TINY)).save_pretrained(root / "sd-vae-ft-mse")
    w2v = Wav2Vec2Config(hidden_size=MEMO_TINY.audio_feature_dim, num_hidden_layers=MEMO_TINY.audio_layers,
                         num_attention_heads=2, intermediate_size=16, conv_dim=(16, 16), conv_kernel=(10, 3),
                         conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(w2v).save_pretrained(root / "wav2vec2-base-960h")


def _randomized(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = build_net(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


@pytest.fixture
def memo_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(memo_checkpoint, "get_preset", lambda name: MEMO_TINY)
    net = _randomized(MEMO_TINY)
    _write_memo_folder(tmp_path / "memo", net)
    return tmp_path / "memo", net


def test_memo_folder_loads_strictly_and_generates(memo_folder, tmp_path):
    from talkfast.pipeline.loader import load_pipeline

    root, written = memo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32", emotion="happy")
    assert isinstance(pipe, MemoPipeline) and pipe.sampler == "flow" and pipe.emotion == emotion_index("happy")
    for (k, v), (k2, w) in zip(pipe.net.state_dict().items(), written.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, w, rtol=0, atol=0)
    speech, rate = sf.read(PORTRAIT.parent / "speech.wav", dtype="float32")
    short = tmp_path / "speech.wav"  # 0.4 s at 30 fps: 12 frames, three chained clips of 4
    sf.write(short, speech[: int(0.4 * rate)], rate)
    out = tmp_path / "out" / "talk.mp4"
    res = pipe.generate(PORTRAIT, short, out, GenerateOptions(fps=pipe.default_fps, steps=2))
    assert res.frames == 12 and res.clips == 3
    info = probe_video(out)
    assert info.num_frames == 12 and info.has_audio and abs(info.fps - 30) < 1e-6
    opts = res.sidecar["options"]
    assert opts["motion_source"] == "pixels" and opts["hallo_context_tiling"] is True  # as released
    assert res.sidecar["model"] == "memo_tiny" and res.sidecar["emotion"] == "happy"


def test_generate_cli_on_a_memo_folder_with_the_balanced_preset(memo_folder, tmp_path, capsys):
    from talkfast.app.cli import main

    root, _ = memo_folder
    speech, rate = sf.read(PORTRAIT.parent / "speech.wav", dtype="float32")
    short = tmp_path / "speech.wav"
    sf.write(short, speech[: int(0.25 * rate)], rate)  # 8 frames at 30 fps: two clips
    out = tmp_path / "memo.mp4"
    code = main(["generate", "--checkpoint", str(root), "-s", str(PORTRAIT), "-a", str(short), "-o", str(out),
                 "--steps", "8", "--accel", "balanced", "--emotion", "sad", "-q"])
    assert code == 0, capsys.readouterr().err
    side = json.loads(out.with_suffix(".json").read_text())
    summary = side["accelerator"]["summary"]
    assert side["emotion"] == "sad" and side["options"]["fps"] == 30 and summary["reduced_steps"] > 0
    assert side["accelerator"]["config"]["dfa"] is not None and probe_video(out).num_frames == 8
    assert main(["generate", "--checkpoint", str(root), "-o", str(tmp_path / "x.mp4"), "--emotion", "bored", "-q"]) == 2
    assert "--emotion must be one of" in capsys.readouterr().err


def test_memo_folder_names_every_bad_key_and_ignores_extra_ones(memo_folder, caplog):
    root, net = memo_folder
    path = root / "diffusion_net" / "diffusion_pytorch_model.safetensors"
    state = {k: v.contiguous() for k, v in net.denoising_unet.state_dict().items()}
    state["not.a.memo.key"] = torch.zeros(1)
    save_file(state, str(path))
    with caplog.at_level(logging.WARNING):
        weights = memo_checkpoint.load_memo(root)
    assert weights.ignored["diffusion_net"] == ["not.a.memo.key"] and "not.a.memo.key" in caplog.text
    missing = "up_blocks.3.audio_modules.2.transformer_blocks.0.attn2.add_k_proj.weight"
    del state[missing]
    state["conv_in.weight"] = torch.zeros(1, 2, 3, 3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        memo_checkpoint.load_memo(root)
    assert missing in str(err.value) and "conv_in.weight" in str(err.value) and "diffusion_net" in str(err.value)
    (root / "image_proj" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="image_proj"):
        memo_checkpoint.load_memo(root)


def test_doctor_reads_a_memo_folder_key_by_key(memo_folder, monkeypatch):
    import talkfast.models.config as config
    from talkfast.app.doctor import check_checkpoint

    root, _ = memo_folder
    monkeypatch.setattr(config, "get_preset", lambda name: MEMO_TINY)
    ok, text = check_checkpoint(root)
    assert ok and text.startswith("MEMO checkpoint: all") and "VAE sd-vae-ft-mse" in text and "wav2vec2 wav2vec2" in text
    save_file({"x": torch.zeros(1)}, str(root / "audio_proj" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="audio_proj"):
        check_checkpoint(root)


# ---------------------------------------------------------------------------------------- accelerators
MEMO_MEL = MEMO_TINY.replace(name="memo_tiny", audio_features="mel", audio_layers=1, audio_feature_dim=320)


@pytest.fixture(scope="module")
def pipe():
    net = _randomized(MEMO_MEL)
    vae = AutoencoderKL(**loading.small_vae_config(MEMO_MEL))
    return MemoPipeline(net, vae.eval(), AudioConditioner("mel"), emotion="sad")


@pytest.fixture(scope="module")
def inputs():
    return tone_inputs(0.3)  # 9 frames at 30 fps: three chained clips


def _run(pipe, inputs, acc=None):
    return generated_frames(pipe, inputs, acc, steps=6)


@pytest.fixture(scope="module")
def baseline(pipe, inputs):
    return _run(pipe, inputs)


@pytest.mark.parametrize("cfg", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_every_step_a_key_step_equals_the_baseline(pipe, inputs, baseline, cfg):
    acc = build_accelerator(cfg)
    out = _run(pipe, inputs, acc)
    torch.testing.assert_close(out, baseline, rtol=0, atol=0)
    assert acc.summary()["reduced_steps"] == 0


@pytest.mark.parametrize("name", ["lightningcp", "deepcache", "fasterdiffusion"])
def test_reduced_steps_run_on_memo(pipe, inputs, baseline, name):
    cfg = AccelConfig(name, CachingConfig(keys=KeySchedule("uniform", interval=3)))
    if name == "lightningcp":
        cfg = cfg.replace(dfa=DFAConfig(temporal=True), drop_ref=True,
                          caching=CachingConfig(keys=KeySchedule("uniform", interval=3), forecast=1, guidance_reuse=True))
    acc = build_accelerator(cfg)
    out = _run(pipe, inputs, acc)
    s = acc.summary()
    assert s["reduced_steps"] == 3 * 4 and torch.isfinite(out).all()  # 3 clips x 4 of 6 steps
    assert (out - baseline).abs().max() > 1e-6


@pytest.mark.parametrize("sampler", ["dpmpp2m", "unipc"])
def test_multistep_flow_samplers_on_memo_clips(pipe, inputs, baseline, sampler):
    """MEMO with the flow variants of the multistep solvers: a fresh solver state per chained clip,
    every degenerate setting equal to the plain solver, reduced steps running on it."""
    base = generated_frames(pipe, inputs, steps=6, sampler=sampler)
    assert base.shape == baseline.shape and not torch.equal(base, baseline)  # not flow Euler
    for cfg in DEGENERATE.values():
        torch.testing.assert_close(generated_frames(pipe, inputs, build_accelerator(cfg), steps=6, sampler=sampler),
                                   base, rtol=0, atol=0)
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3), forecast=1)))
    out = generated_frames(pipe, inputs, acc, steps=6, sampler=sampler)
    assert acc.summary()["reduced_steps"] == 3 * 4 and torch.isfinite(out).all() and not torch.equal(out, base)


def test_reduced_path_with_the_key_steps_audio_stream_reproduces_the_full_output(pipe):
    """The cut check on MEMO: the shallow path on the key step's own latent and timestep gives the
    full output, because the audio stream entering the last audio module comes from the key step's
    cache (without it the final joint module would read the raw audio tokens)."""
    net, cfg = pipe.net, pipe.net.cfg
    g = torch.Generator().manual_seed(0)
    side, frames = 8, cfg.clip_frames
    ctx = torch.randn(2, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g)
    net.write_reference(torch.randn(1 + cfg.motion_frames, 4, side, side, generator=g), ctx)
    net.update_motion_memory(reset=True)
    try:
        cond = UNetCond(context=ctx, audio=torch.randn(2, frames, cfg.audio_tokens, cfg.unet.audio_attention_dim,
                                                       generator=g),
                        emotion=torch.tensor([9, 2]), layout=ItemLayout.cfg(1, True))
        lat = torch.randn(2, 4, frames, side, side, generator=g)
        t = torch.tensor([640.5, 640.5])
        acc = LightningCP().attach(net)
        d, u = acc.cut()
        capture = CapturePlan(u, keep_audio=True)
        full = net.denoise(lat, t, cond, capture)
        assert capture.audio is not None
        shallow = net.denoise(lat, t, cond, ShallowPlan(d, u, capture, cond.layout, lambda: net.ref_state.layout))
        torch.testing.assert_close(shallow, full, rtol=0, atol=0)
        capture.audio = None  # the raw tokens instead of the stream: a different output
        wrong = net.denoise(lat, t, cond, ShallowPlan(d, u, capture, cond.layout, lambda: net.ref_state.layout))
        assert (wrong - full).abs().max() > 1e-6
        acc.detach()
    finally:
        net.clear_reference()


def test_memo_flops_on_meta_at_a_reduced_size():
    from talkfast.eval.bench_methods import BenchMethod, _lcp
    from talkfast.eval.speed import run_speed_bench

    keys = KeySchedule("uniform", interval=2)
    result = run_speed_bench("memo", "meta", torch.float32, frames=2, steps=4, size=64, repeats=1,
                             methods=[BenchMethod("baseline"), BenchMethod("lightningcp", _lcp(keys))])
    rows = {r.name: r for r in result.methods}
    # key steps 0 and 2 of 4: two full steps and two reduced ones (the last up layer alone)
    assert rows["baseline"].flops and 0.5 < rows["lightningcp"].flops / rows["baseline"].flops < 0.6
    assert math.isclose(rows["lightningcp"].flops_ratio, rows["lightningcp"].flops / rows["baseline"].flops)
