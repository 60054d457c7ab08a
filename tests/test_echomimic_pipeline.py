"""EchoMimic v1 end to end at tiny width (issue 15, stage 2b): a folder in EchoMimic's
``pretrained_weights`` layout (antgroup/echomimic a53e970: the four .pth files,
``audio_processor/whisper_tiny.pt``, ``sd-vae-ft-mse/``) -> ``talkfast generate --checkpoint DIR``
-> a 24 fps mp4 with EchoMimic's frame count and the audio. The whisper checkpoint is the fake
one of test_whisper_features.py (openai keys, width 8: tokens (50, 8)); the VAE is the reduced
AutoencoderKL of test_checkpoint.py; the net is the tiny EchoMimic of test_echomimic.py with
attn2 reading 8-wide tokens."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from diffusers import AutoencoderKL
from test_echomimic import TINY_ECHO, randomized, write_folder
from test_whisper_features import DIMS, openai_state_dict
from tiny_pipeline import every_step

from talkfast.accelerators import build_accelerator
from talkfast.accelerators.base import CapturePlan, gather_frames
from talkfast.accelerators.caching import CachingConfig
from talkfast.accelerators.config import AccelConfig
from talkfast.accelerators.dfa import DFAConfig
from talkfast.accelerators.schedule import KeySchedule
from talkfast.app.cli import main
from talkfast.errors import CheckpointError
from talkfast.io.audio import load_audio
from talkfast.io.video import probe_video
from talkfast.models import loading
from talkfast.pipeline.echomimic import EchoMimicPipeline
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "src/talkfast/assets/examples/portrait.png"
TOY = TINY_ECHO.replace(unet=dataclasses.replace(TINY_ECHO.unet, cross_attention_dim=8, audio_attention_dim=8),
                        audio_feature_dim=8)


@pytest.fixture
def echo_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "get_preset", lambda name: TOY)
    net = randomized(TOY, seed=3)
    root = write_folder(net, tmp_path / "pretrained_weights")
    (root / "audio_processor").mkdir()
    torch.save({"dims": DIMS, "model_state_dict": openai_state_dict()}, root / "audio_processor" / "whisper_tiny.pt")
    torch.manual_seed(0)
    AutoencoderKL(**loading.small_vae_config(TOY)).save_pretrained(root / "sd-vae-ft-mse")
    return root, net


@pytest.fixture
def speech(tmp_path) -> Path:
    data, rate = sf.read(ROOT / "src/talkfast/assets/examples/speech.wav", dtype="float32")
    path = tmp_path / "speech.wav"
    sf.write(path, data[: int(rate * 0.6)], rate)  # 0.6 s: ~15 frames at 24 fps, two windows
    return path


def test_generate_cli_writes_echomimic_video(echo_folder, speech, tmp_path, capsys):
    root, _ = echo_folder
    out = tmp_path / "out" / "echo.mp4"
    code = main(["generate", "--checkpoint", str(root), "-s", str(PORTRAIT), "-a", str(speech), "-o", str(out),
                 "--steps", "2", "-q"])  # --accel auto: no acceleration on EchoMimic
    assert code == 0, capsys.readouterr().err
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    frames = pipe.audio.stream(load_audio(speech)).num_frames(24)
    info = probe_video(out)
    assert info.num_frames == frames > 12 and info.has_audio and info.fps == pytest.approx(24)
    assert (info.width, info.height) == (64, 64)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["variant"] == "default" and side["options"]["guidance"] == 2.5 and side["options"]["fps"] == 24
    assert side["window_calls"] == 2 * 2  # two windows per step, two steps


def test_loader_builds_the_echomimic_pipeline(echo_folder):
    root, net = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    assert isinstance(pipe, EchoMimicPipeline) and pipe.variant == "default" and pipe.default_fps == 24
    for (k, v), (k2, w) in zip(pipe.net.state_dict().items(), net.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, w, rtol=0, atol=0)
    o = pipe.resolve()
    assert (o.steps, o.guidance, o.fps) == (30, 2.5, 24)
    # acc: 6 steps, no guidance; the variant picks the files
    with pytest.raises(CheckpointError, match="denoising_unet_acc.pth"):
        load_pipeline(root, device="cpu", dtype="fp32", variant="acc")
    write_folder(net, root, "acc")
    acc = load_pipeline(root, device="cpu", dtype="fp32", variant="acc")
    o = acc.resolve()
    assert (acc.variant, o.steps, o.guidance, o.fps) == ("acc", 6, 1.0, 24)
    face, tokens = torch.zeros(1, 16, 1, 8, 8), torch.zeros(30, 50, 8)
    assert acc.make_window_predictor(face, tokens, o.guidance, [999], 30).guidance is None  # no CFG
    with pytest.raises(ValueError):
        load_pipeline(None, device="cpu", dtype="fp32", variant="acc")


def test_missing_whisper_and_vae_are_listed(echo_folder):
    root, _ = echo_folder
    (root / "audio_processor" / "whisper_tiny.pt").unlink()
    shutil.rmtree(root / "sd-vae-ft-mse")
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, device="cpu", dtype="fp32")
    assert "whisper_tiny.pt" in str(err.value) and "sd-vae-ft-mse" in str(err.value)


@torch.no_grad()
def test_long_audio_is_made_in_chunks(echo_folder, speech):
    """Chunks of at most max_frames frames, each its own closed loop, decoded and handed on in pieces;
    one window call per window and step."""
    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    pipe.max_frames = 8
    pieces = []
    res = pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=2, fps=24), on_clip=pieces.append)
    assert res.clips == 2 and res.frames > 12 and sum(p.shape[0] for p in pieces) == res.frames
    assert res.sidecar["window_calls"] == 2 * (1 + 1)  # each chunk <= 12 frames: one window per step
    pipe.max_frames = 1200
    whole = []
    res2 = pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=2, fps=24), on_clip=whole.append)
    assert res2.clips == 1 and res2.sidecar["window_calls"] == 2 * 2


# ------------------------------------------------------------------------------ accelerators on the windows
def _frames(pipe, speech, acc=None, steps=4, guidance=None, sampler=None):
    pieces = []
    pipe.generate(PORTRAIT, speech, None, GenerateOptions(steps=steps, guidance=guidance, fps=24, sampler=sampler),
                  accelerator=acc, on_clip=pieces.append)
    return torch.cat(pieces)


@torch.no_grad()
def test_every_accelerator_degenerate_setting_equals_the_windowed_baseline(echo_folder, speech):
    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    base = _frames(pipe, speech)
    for cfg in (every_step("lightningcp"), every_step("deepcache"), every_step("fasterdiffusion", noise_injection=0.0),
                every_step("lightningcp", forecast=1, guidance_reuse=True),
                AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("explicit", steps=(0, 1, 2, 3))))):
        acc = build_accelerator(cfg)
        torch.testing.assert_close(_frames(pipe, speech, acc), base, rtol=0, atol=0)
        s = acc.summary()
        assert s["reduced_steps"] == 0 and s["full_steps"] == 4, cfg.method


@torch.no_grad()
@pytest.mark.parametrize("sampler", ["dpmpp2m", "unipc"])
def test_multistep_samplers_on_the_windows(echo_folder, speech, sampler):
    """EchoMimic's windows with a multistep solver (one solver state over the whole latent, reset
    per run): degenerate LightningCP equals the plain solver; key steps 0 and 2 run reduced."""
    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    base = _frames(pipe, speech, sampler=sampler)
    assert not torch.equal(base, _frames(pipe, speech))  # not DDIM
    torch.testing.assert_close(_frames(pipe, speech, build_accelerator(every_step("lightningcp")), sampler=sampler),
                               base, rtol=0, atol=0)
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2))))
    out = _frames(pipe, speech, acc, sampler=sampler)
    assert acc.summary()["reduced_steps"] == 2 and torch.isfinite(out).all() and not torch.equal(out, base)


@torch.no_grad()
def test_reduced_steps_run_on_the_windows(echo_folder, speech):
    """Key steps 0 and 2; steps 1 and 3 reduced, their windows shifted against the key step's: the
    per-frame cache is regathered. The result moves, but not far; every method runs."""
    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    base = _frames(pipe, speech)
    for cfg in (AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2))),
                AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2), forecast=1,
                                                         guidance_reuse=True)),
                AccelConfig("deepcache", CachingConfig(keys=KeySchedule("uniform", interval=2))),
                AccelConfig("fasterdiffusion", CachingConfig(keys=KeySchedule("uniform", interval=2)))):
        acc = build_accelerator(cfg)
        out = _frames(pipe, speech, acc)
        s = acc.summary()
        assert (s["full_steps"], s["reduced_steps"]) == (2, 2), cfg.method
        assert torch.isfinite(out).all() and 0 < (out - base).abs().max() < 0.5, cfg.method


def _lcp2(**kw) -> AccelConfig:
    return AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)), **kw)


@torch.no_grad()
def test_dfa_and_reference_removal_on_the_windows(echo_folder, speech, monkeypatch):
    """DFA on the windowed path: with every step a key step it equals the baseline; with EchoMimic's
    face mask all ones (every token foreground) its reduced window calls equal LightningCP's;
    with the real mask they compute the foreground only (fewer tokens) and read the background at
    their own frames from the key step's per-frame store. Reference removal runs on the windows."""
    from talkfast.accelerators.dfa import DFA
    from talkfast.pipeline import echomimic as echo

    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    base = _frames(pipe, speech)
    dfa = DFAConfig(temporal=True)
    every = build_accelerator(every_step("lightningcp").replace(dfa=dfa, drop_ref=True, drop_ref_layers=()))
    torch.testing.assert_close(_frames(pipe, speech, every), base, rtol=0, atol=0)

    lengths, original = [], DFA.foreground

    def counting(self, length, device):
        if self.shared is not None and self.shared.phase == "shallow":
            lengths.append((length, len(original(self, length, device))))
        return original(self, length, device)

    monkeypatch.setattr(DFA, "foreground", counting)
    lcp = _frames(pipe, speech, build_accelerator(_lcp2()))
    with_dfa = _frames(pipe, speech, build_accelerator(_lcp2(dfa=dfa)))
    assert lengths and any(fg < n for n, fg in lengths)  # the face mask leaves background tokens out
    assert torch.isfinite(with_dfa).all() and 0 < (with_dfa - lcp).abs().max() < 0.5
    dropped = _frames(pipe, speech, build_accelerator(_lcp2(drop_ref=True)))
    assert torch.isfinite(dropped).all() and (dropped - lcp).abs().max() > 0

    mask = echo.echomimic_face_mask
    monkeypatch.setattr(echo, "echomimic_face_mask", lambda *a, **k: torch.ones_like(mask(*a, **k)))
    lengths.clear()
    lcp_ones = _frames(pipe, speech, build_accelerator(_lcp2()))
    dfa_ones = _frames(pipe, speech, build_accelerator(_lcp2(dfa=dfa)))
    assert lengths and all(fg == n for n, fg in lengths)
    torch.testing.assert_close(dfa_ones, lcp_ones, rtol=1e-5, atol=1e-5)


def test_per_frame_cache_averages_windows_and_regathers():
    """CapturePlan over two windows of L = 5 (frames [0, 1, 2] and [2, 3, 4]; K = 2 items): frame 2
    gets the mean of both windows; gather_frames picks rows per item at new frames."""
    cap = CapturePlan(0)
    for w, frames in enumerate(([0, 1, 2], [2, 3, 4])):
        sub = cap.for_window(w, torch.tensor([frames]), 5)
        sub.h = torch.tensor([[10.0 * w + f] for f in frames] + [[100 + 10.0 * w + f] for f in frames])  # (K*f, 1)
    cap.after_windows()
    want = torch.tensor([0, 1, (2 + 12) / 2, 13, 14, 100, 101, (102 + 112) / 2, 113, 114])[:, None]
    torch.testing.assert_close(cap.h, want, rtol=0, atol=0)
    got = gather_frames(cap.h, 5, [0, 0, 1, 1], torch.tensor([[4, 0], [1, 2]]))  # 2 steps x 2 halves
    torch.testing.assert_close(got[:, 0], torch.tensor([14, 0, 1, 7, 114, 100, 101, 107.0]), rtol=0, atol=0)


def test_doctor_reads_an_echomimic_folder(echo_folder, capsys):
    """doctor --checkpoint on EchoMimic's layout: each complete variant's files are read and checked
    key by key (a wrong shape is named), whisper-tiny and the VAE are reported."""
    root, net = echo_folder
    code = main(["doctor", "--checkpoint", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "EchoMimic weights folder" in out and "default: all" in out and "whisper-tiny found" in out
    assert "acc:" not in out  # no acc files in the folder
    state = {k: v for k, v in net.reference_unet.state_dict().items()}
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    torch.save(state, root / "reference_unet.pth")
    code = main(["doctor", "--checkpoint", str(root)])
    out = capsys.readouterr().out
    assert code != 0 and "reference_unet.pth" in out and key in out


def test_tune_writes_beside_an_echomimic_folder_and_generate_uses_it(echo_folder, speech, tmp_path, capsys):
    """The tuner on another project's checkpoint: calibration samples given, the picks written to
    talkfast_tuned.json in that folder (model.json is a talkfast folder's), and --accel auto then
    runs the tuned setting on EchoMimic's windows."""
    from talkfast.accelerators.tuned import read_tuned, tuned_file

    root, _ = echo_folder
    assert tuned_file(root) == root / "talkfast_tuned.json"
    assert tuned_file(root, "acc") == root / "talkfast_tuned_acc.json"
    assert main(["tune", "--checkpoint", str(root), "--out", str(tmp_path / "t"), "-q"]) == 2  # no samples
    assert "--sample IMAGE AUDIO" in capsys.readouterr().err
    code = main(["tune", "--checkpoint", str(root), "--sample", str(PORTRAIT), str(speech), "--steps", "4",
                 "--max-settings", "2", "--out", str(tmp_path / "t"), "-q"])
    assert code == 0, capsys.readouterr().err
    tuned = read_tuned(root)
    assert set(tuned) == {"quality", "balanced", "fast"} and tuned["balanced"]["steps"] <= 4
    assert read_tuned(root, "acc") == {}  # another variant: its own file
    out = tmp_path / "tuned.mp4"
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(root), "-s", str(PORTRAIT), "-a", str(speech), "-o", str(out), "-q"]) == 0
    assert "tuned for this model" in capsys.readouterr().out
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["accel_choice"]["source"] == "tuned" and side["options"]["steps"] == tuned["balanced"]["steps"]


def test_demo_seed_defaults_to_the_family_seed(echo_folder, tmp_path):
    from talkfast.app.demo import DemoEngine

    root, _ = echo_folder
    assert DemoEngine(load_pipeline(root, device="cpu", dtype="fp32"), out_dir=tmp_path).seed == 420  # EchoMimic's
    assert DemoEngine(load_pipeline(root, device="cpu", dtype="fp32"), out_dir=tmp_path, seed=5).seed == 5
