"""EchoMimic v1's sampling in the one loop (issue 15, stage 2b): DDIM settings, the shifting
context windows as a predictor (talkfast.sampling.windows), pinned by hand cases, a fake model
whose outputs are known, and a plain-torch re-computation of EchoMimic's step loop
(antgroup/echomimic a53e970, src/pipelines/pipeline_echo_mimic.py; echomimic_memo.md §1.5)."""

import pytest
import torch
from test_echomimic import TINY_ECHO, randomized

from talkfast.models.attention import ItemLayout
from talkfast.models.unet import UNetCond
from talkfast.pipeline.echomimic import window_model
from talkfast.sampling.loop import denoise
from talkfast.sampling.scheduler import make_scheduler
from talkfast.sampling.windows import (
    WindowedPredictor,
    shifted_windows,
    uniform_windows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scheduler_is_echomimics_ddim():
    s = make_scheduler(30)
    c = s.config
    assert (c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type) == (0.00085, 0.012, "linear", "v_prediction")
    assert c.rescale_betas_zero_snr and c.timestep_spacing == "trailing" and c.steps_offset == 1
    t = s.timesteps.tolist()
    assert t[:3] == [999, 966, 932] and t[-2:] == [66, 32]
    assert float(s.alphas_cumprod[999]) == 0.0  # zero SNR: x0 = -v at the first step
    assert make_scheduler(6).timesteps.tolist() == [999, 832, 666, 499, 332, 166]  # the acc variant


def test_uniform_windows_and_shift_hand_case():
    w = uniform_windows(30)
    assert [x[0] for x in w] == [0, 9, 18, 27]
    assert w[3] == [27, 28, 29, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # closed loop: taken mod L
    assert uniform_windows(10) == [list(range(10))] and uniform_windows(12) == [list(range(12))]
    assert shifted_windows(w, 3, 30)[0] == list(range(6, 18))  # + 2 * 3
    assert shifted_windows(w, 4, 30, shift=3)[2] == [(18 + 12 + k) % 30 for k in range(12)]  # pose: 3 * t_i
    p = WindowedPredictor(None, make_scheduler(30).timesteps, 30, 2.5)
    assert p.step_index(torch.tensor([999, 932])) == [0, 2]
    assert p.frames(3, [2]).tolist() == [[(27 + 4 + k) % 30 for k in range(12)]]
    assert p.frames(0, [0, 14]).tolist() == [list(range(12)), [(28 + k) % 30 for k in range(12)]]


def test_overlapping_windows_average_exactly():
    """L = 15: windows [0..11] and [9..14, 0..5]. A fake model outputs (w + 1) for the conditional
    half and 10 (w + 1) for the unconditional one in window w: frames in both windows get the mean."""
    seen = []

    def fake(x, t, plan, halves, frames):
        w = len(seen)
        seen.append(frames.tolist())
        out = torch.empty(len(halves) * x.shape[0], *x.shape[1:])
        for i, h in enumerate(halves):
            out[i * x.shape[0] : (i + 1) * x.shape[0]] = (w + 1) * (1 if h else 10)
        return out

    sched = make_scheduler(4)
    p = WindowedPredictor(fake, sched.timesteps, 15, 2.5)
    lat = torch.zeros(1, 4, 15, 2, 2)
    raw = p.model_output(lat, sched.timesteps[:1], None, (0, 1))
    assert seen == [[list(range(12))], [[9, 10, 11, 12, 13, 14, 0, 1, 2, 3, 4, 5]]] and p.calls == 2
    want_c = torch.tensor([1.5] * 6 + [1.0] * 3 + [1.5] * 3 + [2.0] * 3)
    torch.testing.assert_close(raw[1, 0, :, 0, 0], want_c, rtol=0, atol=0)
    torch.testing.assert_close(raw[0, 0, :, 0, 0], 10 * want_c, rtol=0, atol=0)
    seen.clear()
    guided = p(lat, sched.timesteps[:1], None)
    torch.testing.assert_close(guided, raw[:1] + 2.5 * (raw[1:] - raw[:1]), rtol=0, atol=0)
    # without guidance only the conditional half runs, averaged too
    seen.clear()
    one = WindowedPredictor(fake, sched.timesteps, 15, 1.0)(lat, sched.timesteps[:1], None)
    torch.testing.assert_close(one[0, 0, :, 0, 0], want_c, rtol=0, atol=0)
    # step 1 shifts both windows by 2
    seen.clear()
    p.model_output(lat, sched.timesteps[1:2], None, (1,))
    assert seen[0] == [list(range(2, 14))] and seen[1] == [[(11 + k) % 15 for k in range(12)]]


def _net_and_conditioning(frames: int, seed: int = 0):
    net = randomized(TINY_ECHO, seed)
    cfg = net.cfg
    g = torch.Generator().manual_seed(seed + 1)
    lat = cfg.latent_size
    tokens = torch.randn(frames, cfg.audio_tokens, cfg.unet.cross_attention_dim, generator=g)
    mask = torch.zeros(1, 1, cfg.image_size, cfg.image_size)
    mask[..., 16:48, 20:44] = 1.0
    face = net.face_locator(mask).unsqueeze(2)
    net.write_reference(torch.randn(1, cfg.latent_channels, lat, lat, generator=g), None)
    x = torch.randn(1, cfg.latent_channels, frames, lat, lat, generator=g)
    return net, tokens, face, x


def _plain(net, x, t, tokens, face, guidance):
    """One direct CFG call over the given frames: [uncond; cond], audio [zeros; tokens], face [0; F]."""
    cond = UNetCond(audio=torch.stack([torch.zeros_like(tokens), tokens]),
                    face_feature=torch.cat([torch.zeros_like(face), face]), layout=ItemLayout.cfg(1, True))
    u, c = net.denoise(torch.cat([x, x]), torch.cat([t, t]), cond).chunk(2)
    return u + guidance * (c - u)


@torch.no_grad()
def test_one_window_over_all_frames_equals_a_plain_call():
    net, tokens, face, x = _net_and_conditioning(4)
    sched = make_scheduler(5)
    p = WindowedPredictor(window_model(net, tokens, face, True, torch.float32), sched.timesteps, 4, 2.5)
    t0 = sched.timesteps[:1]
    torch.testing.assert_close(p(x, t0, None), _plain(net, x, t0, tokens, face, 2.5), rtol=0, atol=0)
    # at step 1 (L <= 12) the shift of 2 rolls the frame order: a plain call on the rolled frames
    t1 = sched.timesteps[1:2]
    order = torch.tensor([2, 3, 0, 1])
    rolled = _plain(net, x[:, :, order], t1, tokens[order], face, 2.5)
    want = torch.empty_like(rolled)
    want[:, :, order] = rolled
    torch.testing.assert_close(p(x, t1, None), want, rtol=0, atol=0)
    # a batch of two steps (an accelerator's batched call) shifts each item by its own step
    both = p(torch.cat([x, x]), sched.timesteps[:2], None)
    torch.testing.assert_close(both, torch.cat([p(x, t0, None), p(x, t1, None)]), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_denoise_equals_echomimics_step_loop():
    """The one loop + the windowed predictor against EchoMimic's loop written out in plain torch
    (windows, scatter-add, counter, guidance, DDIM step on all frames), L = 15 frames, 3 steps."""
    L, steps, g = 15, 3, 2.5
    net, tokens, face, x = _net_and_conditioning(L, seed=2)
    run = window_model(net, tokens, face, True, torch.float32)
    sched = make_scheduler(steps)
    got = denoise(WindowedPredictor(run, sched.timesteps, L, g), sched, x)

    ref_sched = make_scheduler(steps)
    lat = x.clone()
    context = [[(s + k) % L for k in range(12)] for s in range(0, L, 9)]
    for t_i, t in enumerate(ref_sched.timesteps):
        noise_pred = torch.zeros(2, *lat.shape[1:])
        counter = torch.zeros(1, 1, L, 1, 1)
        for ctx in context:
            c = [(i + 2 * t_i) % L for i in ctx]
            tok = tokens[c][None]
            cond = UNetCond(audio=torch.cat([torch.zeros_like(tok), tok]),
                            face_feature=torch.cat([torch.zeros_like(face), face]), layout=ItemLayout.cfg(1, True))
            pred = net.denoise(lat[:, :, c].repeat(2, 1, 1, 1, 1), t, cond)
            noise_pred[:, :, c] = noise_pred[:, :, c] + pred
            counter[:, :, c] = counter[:, :, c] + 1
        u, v = (noise_pred / counter).chunk(2)
        lat = ref_sched.step(u + g * (v - u), t, lat, eta=0.0).prev_sample
    torch.testing.assert_close(got, lat, rtol=0, atol=0)
