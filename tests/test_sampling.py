"""Hallo's DDIM configuration and the denoising loop."""

import torch

from talkfast.sampling.loop import FullSteps, StepAction, denoise
from talkfast.sampling.scheduler import alpha_bar, make_scheduler, noise_to, previous_timestep, split_prediction


def test_hallo_timesteps_and_previous_timestep_rule():
    s40 = make_scheduler(40)
    ts = s40.timesteps.tolist()
    assert ts[0] == 999 and ts[1] == 974 and ts[-1] == 24 and len(ts) == 40
    s30 = make_scheduler(30)
    ts30 = s30.timesteps.tolist()
    i = ts30.index(966)
    assert previous_timestep(s30, 966) == 933 and ts30[i + 1] != 933  # not always the next listed step
    # Zero terminal SNR: alpha_bar(999) == 0; below t=0 the final alpha is 1.
    assert alpha_bar(s40, 999) == 0.0 and alpha_bar(s40, -1) == 1.0
    assert s40.config.prediction_type == "v_prediction" and s40.config.beta_schedule == "linear"


def test_closed_form_matches_scheduler_step():
    sched = make_scheduler(10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 2, 8, 8, generator=g)
    v = torch.randn(1, 4, 2, 8, 8, generator=g)
    for t in sched.timesteps.tolist()[1:]:  # t=999 has alpha 0: x0 is v-defined, fine, but skip
        x0, eps = split_prediction(sched, v, z, t)
        torch.testing.assert_close(noise_to(sched, x0, eps, t), z, rtol=1e-5, atol=1e-5)
        stepped = sched.step(v, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(noise_to(sched, x0, eps, previous_timestep(sched, t)), stepped, rtol=1e-5, atol=1e-5)


def test_full_step_loop_equals_manual_loop():
    sched = make_scheduler(6)
    z0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    predict = lambda x, t, plan: torch.sin(x) * (t.float()[:, None, None, None, None] / 1000)  # noqa: E731
    out = denoise(predict, sched, z0)
    ref = make_scheduler(6)
    z = z0
    for t in ref.timesteps:
        z = ref.step(predict(z, t[None], None), t, z, eta=0.0).prev_sample
    torch.testing.assert_close(out, z, rtol=0, atol=0)


class BatchPlanner(FullSteps):
    """Full step at 0, then all remaining steps as one batch with the same latent copied."""

    def __init__(self, chain=True):
        self._chain = chain
        self.n = 0

    def reset(self, scheduler):
        self.n = len(scheduler.timesteps)

    def next_action(self, index):
        return StepAction((index,), True) if index == 0 else StepAction(tuple(range(index, self.n)), False)

    def batch_latents(self, action, latents):
        return latents.expand(len(action.steps), *latents.shape[1:]).clone()

    def chain(self, action):
        return self._chain


def test_batch_actions_apply_their_predictions_in_order():
    """With a predictor that ignores its input latent, one batched call over a group of steps
    followed by chained scheduler steps equals the plain loop; calls are counted."""
    calls = []

    def predict(x, t, plan):
        calls.append(len(t))
        return torch.cos(t.float() / 100)[:, None, None, None, None].expand(len(t), 4, 2, 4, 4)

    z0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    full = denoise(predict, make_scheduler(8), z0)
    assert calls == [1] * 8
    calls.clear()
    batched = denoise(predict, make_scheduler(8), z0, BatchPlanner())
    assert calls == [1, 7]
    torch.testing.assert_close(batched, full, rtol=1e-6, atol=1e-6)
    # Without chaining, each step starts from its own input latent: here all equal the
    # latent after step 0, so the result is a single step from there.
    unchained = denoise(predict, make_scheduler(8), z0, BatchPlanner(chain=False))
    assert (unchained - full).abs().max() > 1e-3
