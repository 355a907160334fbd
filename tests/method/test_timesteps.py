import pytest
import torch
from diffusers import DDPMScheduler

from udp_datasets import ProtectionConfig
from udp_datasets.method.timesteps import TimestepSampler, timestep_weights


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_eudp_draws_small_t_more_often_than_uniform(schedule):
    abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule).alphas_cumprod
    eudp = TimestepSampler(abar, ProtectionConfig(timesteps="eudp"))
    uniform = TimestepSampler(abar, ProtectionConfig(timesteps="uniform"))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t_e, _ = eudp.sample(g1, 20000)
    t_u, _ = uniform.sample(g2, 20000)
    assert (t_e < 250).float().mean() > (t_u < 250).float().mean() + 0.1
    assert t_e.float().mean() < t_u.float().mean() - 100
    # the distribution is exactly sqrt(abar)^gamma normalised, from the scheduler's own alphas
    expected = abar.double().sqrt() / abar.double().sqrt().sum()
    assert torch.allclose(eudp.probs.double(), expected, atol=1e-6)


def test_gamma_zero_is_uniform_and_larger_gamma_concentrates():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    p0 = TimestepSampler(abar, ProtectionConfig(timesteps="eudp", gamma=0.0)).probs
    assert torch.allclose(p0, torch.full_like(p0, 1e-3))
    p1 = TimestepSampler(abar, ProtectionConfig(timesteps="eudp", gamma=1.0)).probs
    p4 = TimestepSampler(abar, ProtectionConfig(timesteps="eudp", gamma=4.0)).probs
    assert p4[:100].sum() > p1[:100].sum() > p0[:100].sum()


def test_range_and_snr():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    sampler = TimestepSampler(abar, ProtectionConfig(timesteps="range", t_min=100, t_max=199))
    t, w = sampler.sample(torch.Generator().manual_seed(1), 5000)
    assert t.min() >= 100 and t.max() <= 199 and torch.all(w == 1)
    w_snr = timestep_weights(abar, ProtectionConfig(timesteps="snr", snr_clip=5.0))
    assert w_snr.max() <= 5.0 and w_snr[0] == 5.0 and w_snr[-1] < 1e-3


def test_weight_mode_draws_uniform_t_with_relative_weights():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    sampler = TimestepSampler(abar, ProtectionConfig(timesteps="eudp", timestep_mode="weight"))
    t, w = sampler.sample(torch.Generator().manual_seed(2), 50000)
    assert abs(t.float().mean().item() - 499.5) < 10  # uniform
    assert abs(w.mean().item() - 1.0) < 0.02  # same expectation as sampling
    assert w[t < 100].mean() > w[t > 900].mean()
