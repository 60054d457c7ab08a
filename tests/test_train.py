"""Training objectives: gradients reach every trained part, and a few steps fit one example."""

import torch

from talkfast.face.detect import Box, FaceRegions
from talkfast.face.masks import build_masks, face_locator_image
from talkfast.models.loading import build_random
from talkfast.train.objective import ClipExample, DiffusionObjective, lip_weighted_mse, vae_loss


def example(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, f, m = cfg.image_size, cfg.clip_frames, cfg.motion_frames
    regions = FaceRegions(Box(16, 12, 48, 52), Box(26, 38, 38, 46), (s, s), True, "test")
    lat = cfg.latent_size
    return ClipExample(
        reference=torch.rand(3, s, s, generator=g) * 2 - 1,
        motion=torch.rand(m, 3, s, s, generator=g) * 2 - 1,
        frames=torch.rand(f, 3, s, s, generator=g) * 2 - 1,
        audio=torch.randn(f, cfg.audio_window, cfg.audio_layers, cfg.audio_feature_dim, generator=g),
        masks=build_masks(regions, [lat // 2**i for i in range(cfg.unet.num_levels)], base=lat),
        locator=face_locator_image(regions, s),
        identity=torch.randn(cfg.image_embed_dim, generator=g),
    )


def test_diffusion_loss_trains_every_part_and_fits_one_example():
    torch.manual_seed(0)
    net, vae = build_random("tiny")
    net.requires_grad_(True).train()
    obj = DiffusionObjective(net, vae)
    ex = example(net.cfg)
    loss = obj.loss(ex, torch.Generator().manual_seed(1), uncond=False, timestep=500)
    loss.backward()
    for part in ("reference_unet", "denoising_unet", "face_locator", "imageproj", "audioproj"):
        grads = [p.grad for p in getattr(net, part).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), part
    assert not net.ref_state.banks  # cleared after the step
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = obj.loss(ex, torch.Generator().manual_seed(2), uncond=False, timestep=500)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_unconditional_loss_ignores_the_conditioning():
    torch.manual_seed(0)
    net, vae = build_random("tiny")
    obj = DiffusionObjective(net, vae)
    a, b = example(net.cfg, 0), example(net.cfg, 1)
    b.frames, b.motion = a.frames, a.motion  # same video, different reference/audio/identity/face
    b.reference = a.reference
    with torch.no_grad():
        la = obj.loss(a, torch.Generator().manual_seed(3), uncond=True, timestep=300)
        lb = obj.loss(b, torch.Generator().manual_seed(3), uncond=True, timestep=300)
        lc = obj.loss(b, torch.Generator().manual_seed(3), uncond=False, timestep=300)
    torch.testing.assert_close(la, lb)
    assert (lc - lb).abs() > 1e-6


def test_motion_noise_perturbs_only_the_motion_latents():
    """--motion-noise: the ReferenceNet gets the clean reference latent and noisy motion latents
    (strength at most the setting); without it the motion latents are the clean encodings."""
    torch.manual_seed(0)
    net, vae = build_random("tiny")
    ex = example(net.cfg)
    clean = DiffusionObjective(net, vae).encode(torch.cat([ex.reference[None], ex.motion]))
    written = []
    write = net.write_reference
    net.write_reference = lambda ref, *a, **k: (written.append(ref.detach().clone()), write(ref, *a, **k))[1]
    try:
        with torch.no_grad():
            for noise in (0.0, 0.25):
                DiffusionObjective(net, vae, motion_noise=noise).loss(ex, torch.Generator().manual_seed(4), uncond=False)
    finally:
        del net.write_reference
    plain, noisy = written
    torch.testing.assert_close(plain, clean)
    torch.testing.assert_close(noisy[:1], clean[:1])
    jitter = (noisy[1:] - clean[1:]).std()
    assert 0 < jitter < 0.25 * 1.2


def test_vae_loss_decreases():
    torch.manual_seed(0)
    _, vae = build_random("tiny")
    vae.requires_grad_(True).train()
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 64), torch.linspace(0, 3, 64), indexing="ij")
    x = torch.stack([torch.sin(xx + k) * torch.cos(yy * (k + 1)) for k in range(12)]).reshape(4, 3, 64, 64)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for i in range(20):
        opt.zero_grad()
        loss = vae_loss(vae, x, torch.Generator().manual_seed(i))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0]


def test_training_checkpoints_and_resumes_exactly(tmp_path):
    """Stopping after 4 of 6 steps and resuming gives the same weights as 6 steps in one go."""
    from talkfast.train.loop import TrainConfig, train_net

    def run(out, run_steps=None):
        torch.manual_seed(0)
        net, vae = build_random("tiny")
        ex = example(net.cfg)
        cfg = TrainConfig(steps=6, lr=1e-3, warmup=1, checkpoint_every=5, log_every=2, run_steps=run_steps)
        train_net(net, vae, lambda g: ex, cfg, out)
        return net

    straight = run(tmp_path / "a")
    run(tmp_path / "b", run_steps=4)  # a session that stops early (checkpoint at its last step)
    resumed_cfg_net = run(tmp_path / "b")  # finds b/net_ckpt.pt at step 4 and continues
    for (k, v), (_, w) in zip(straight.state_dict().items(), resumed_cfg_net.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    assert (tmp_path / "a" / "net_train.json").exists()



def test_lip_weighted_mse():
    """Uniform error: the same as plain MSE (the weights are normalised); error inside the lip
    region counts (1 + w) times as much as the same error outside; w = 0 is plain MSE."""
    lip = torch.zeros(4, 4)
    lip[2:, 1:3] = 1.0
    target = torch.zeros(1, 2, 3, 4, 4)
    uniform = torch.full_like(target, 0.5)
    torch.testing.assert_close(lip_weighted_mse(uniform, target, lip.flatten(), 3.0), torch.tensor(0.25))
    inside, outside = torch.zeros_like(target), torch.zeros_like(target)
    inside[..., 2, 1] = 1.0
    outside[..., 0, 0] = 1.0
    ratio = lip_weighted_mse(inside, target, lip.flatten(), 3.0) / lip_weighted_mse(outside, target, lip.flatten(), 3.0)
    torch.testing.assert_close(ratio, torch.tensor(4.0))
    torch.testing.assert_close(lip_weighted_mse(inside, target, lip.flatten(), 0.0),
                               torch.nn.functional.mse_loss(inside, target))
