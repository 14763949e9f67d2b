"""Tests for causvid/flow.py: schedules, noising, CFG, and the Euler / UniPC samplers (CPU, float64)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from causvid import flow


def _per_sample_sigma(x, t):
    return (t.double() / 1000).reshape(-1, *[1] * (x.ndim - 1))


# ---------------------------------------------------------------------------------------------------------------
# Schedules


def test_shift_identity_and_fixed_points():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(flow.shift_sigma(s, 1.0), s)
    for shift in (3.0, 5.0, 8.0):
        out = flow.shift_sigma(s, shift)
        assert out[0] == 0 and out[-1] == 1
        assert (out >= s).all() and (out.diff() > 0).all()  # pushes toward noise, stays monotone
    assert flow.shift_sigma(0.75, 5.0) == pytest.approx(0.9375)  # floats work too


@pytest.mark.parametrize(
    "shift, expected",
    [(5.0, [1000.0, 937.5, 833.3, 625.0]), (8.0, [1000.0, 960.0, 888.9, 727.3])],
)
def test_warp_denoising_step(shift, expected):
    out = flow.warp_denoising_step([1000, 750, 500, 250], shift)
    assert out.tolist() == pytest.approx(expected, abs=0.1)
    # The CausVid form carries a trailing 0, which the appended grid entry maps to 0.
    assert flow.warp_denoising_step([1000, 750, 500, 250, 0], shift)[-1] == 0
    with pytest.raises(ValueError):
        flow.warp_denoising_step([1000, 757.5], shift)  # not an index into the grid


def test_training_timesteps_grid():
    grid = flow.training_timesteps(8.0)
    assert grid.shape == (1000,) and grid[0] == 1000 and (grid.diff() < 0).all()
    assert grid[250].item() == pytest.approx(960.0)  # the grid entry warp reads for 750


def test_causvid_step_list_comes_from_50_step_shift8_euler_schedule():
    t = flow.euler_sigmas(50, 8.0) * 1000
    assert t.shape == (51,) and t[0] == 1000 and t[-1] == 0
    assert t[36].item() == pytest.approx(756.76, abs=0.01)
    assert t[44].item() == pytest.approx(521.74, abs=0.01)
    assert round(t[36].item()) == 757 and round(t[44].item()) == 522


def test_causal_forcing_48_step_schedule_hits_warped_steps():
    t = flow.euler_sigmas(48, 5.0) * 1000
    assert t[[0, 12, 24, 36]].tolist() == pytest.approx(flow.warp_denoising_step([1000, 750, 500, 250], 5.0).tolist())


def test_wan_sampling_sigmas():
    s = flow.sampling_sigmas(50, 5.0)
    assert s.shape == (51,) and s[-1] == 0 and (s.diff() < 0).all()
    assert s[0].item() == pytest.approx(flow.shift_sigma(0.999, 5.0))
    assert s[1].item() == pytest.approx(flow.shift_sigma(0.999 * 49 / 50, 5.0))
    ts = flow.model_timesteps(s, integer=True)
    assert ts.dtype == torch.int64 and ts.shape == (50,) and ts[0] == 999
    assert flow.model_timesteps(s).dtype == torch.float32


def test_normalize_step_list():
    assert flow.normalize_step_list([1000, 757, 522, 0]) == [1000.0, 757.0, 522.0]
    assert flow.normalize_step_list(torch.tensor([1000, 757, 522])) == [1000.0, 757.0, 522.0]
    assert flow.normalize_step_list([1000, 750, 500, 250], warp=True, shift=5.0) == pytest.approx(
        [1000.0, 937.5, 833.33, 625.0], abs=0.01
    )
    # CausVid's warped config: [1000, 750, 500, 250, 0] at shift 8 runs 4 steps.
    assert flow.normalize_step_list([1000, 750, 500, 250, 0], warp=True, shift=8.0) == pytest.approx(
        [1000.0, 960.0, 888.89, 727.27], abs=0.01
    )
    assert flow.normalize_step_list([0.5]) == [0.5]  # any timestep in (0, 1000]
    for bad, message in (([1000, 0, 500], r"in \(0, 1000\]"), ([500, 750], "strictly decreasing"),
                         ([500, 500], "strictly decreasing"), ([1001], r"in \(0, 1000\]"), ([0], r"\(0, 1000\]")):
        with pytest.raises(ValueError, match=message):
            flow.normalize_step_list(bad)
    with pytest.raises(ValueError, match="^warp=True needs the timestep shift$"):
        flow.normalize_step_list([1000, 750], warp=True)


def test_schedules_are_float64_and_warp_takes_integer_indices():
    assert flow.euler_sigmas(4, 5.0).dtype == torch.float64 and flow.sampling_sigmas(4, 5.0).dtype == torch.float64
    assert flow.training_timesteps(5.0).dtype == torch.float64
    assert flow.warp_denoising_step([0], 5.0).tolist() == [0.0]  # t = 0 is the appended 0
    assert flow.warp_denoising_step([1], 5.0).item() == pytest.approx(1000 * 5 * 0.001 / (1 + 4 * 0.001), rel=1e-6)
    for bad in ([-1], [1001], [500.5]):
        with pytest.raises(ValueError, match=r"warp needs integer timesteps in \[0, 1000\]"):
            flow.warp_denoising_step(bad, 5.0)


def test_grid_snapping_by_hand():
    """grid=shift: sigma is the nearest point of 1000 * shift(u), u = 1, 0.999, ..., 0.001 (float32), in add_noise,
    flow_to_x0 and x0_to_flow (which also clamps sigma at min_sigma)."""
    u = np.linspace(1.0, 0.0, 1001, dtype=np.float32)[:-1]
    grid = (8 * u / (1 + 7 * u)).astype(np.float32).astype(np.float64)
    t = torch.tensor([[757.0, 0.0], [20.0, 999.9]])
    sigma = torch.tensor(grid[np.abs(1000 * grid[None, :] - t.double().numpy().reshape(-1, 1)).argmin(1)])
    sigma = sigma.reshape(2, 2, 1, 1, 1)
    assert float(sigma[0, 1]) == pytest.approx(0.007944, abs=1e-6)  # t = 0 reads as the grid's last point
    g = torch.Generator().manual_seed(1)
    x0, noise, x_t = (torch.randn(2, 2, 3, 2, 2, generator=g) for _ in range(3))
    torch.testing.assert_close(flow.add_noise(x0, noise, t, grid=8.0).double(),
                               (1 - sigma) * x0.double() + sigma * noise.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flow.flow_to_x0(noise, x_t, t, grid=8.0).double(), x_t.double() - sigma * noise.double(),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flow.x0_to_flow(x0, x_t, t, grid=8.0).double(),
                               (x_t.double() - x0.double()) / sigma, rtol=1e-5, atol=1e-5)
    clamped = flow.x0_to_flow(x0, x_t, t, min_sigma=0.5, grid=8.0).double()
    torch.testing.assert_close(clamped, (x_t.double() - x0.double()) / sigma.clamp(min=0.5), rtol=1e-5, atol=1e-5)
    assert flow.grid_sigma(torch.tensor(757.0), 8.0).dtype == torch.float32


def test_add_noise_in_bfloat16_mixes_in_float32():
    """bf16 latents are mixed in float32 and rounded once: the bf16 sigma (0.7578 for 0.757) would be off."""
    g = torch.Generator().manual_seed(2)
    x0, noise = (torch.randn(1, 2, 3, 4, 4, generator=g).bfloat16() for _ in range(2))
    expected = ((1 - 0.757) * x0.float() + 0.757 * noise.float()).bfloat16()
    assert torch.equal(flow.add_noise(x0, noise, torch.tensor([[757.0, 757.0]])), expected)


# ---------------------------------------------------------------------------------------------------------------
# Noising, parameterisation, CFG


@pytest.mark.parametrize("t_shape", ["scalar", "batch", "frame"])
def test_add_noise_flow_x0_round_trip(t_shape):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 6, generator=g)
    noise = torch.randn(2, 3, 4, 5, 6, generator=g)
    t = {
        "scalar": 625.0,
        "batch": torch.tensor([937.5, 250.0]),
        "frame": torch.rand(2, 3, generator=g) * 980 + 20,
    }[t_shape]
    x_t = flow.add_noise(x0, noise, t)
    target = noise - x0
    assert torch.allclose(flow.flow_to_x0(target, x_t, t), x0, atol=1e-5)
    assert torch.allclose(flow.x0_to_flow(x0, x_t, t), target, atol=1e-4)
    # Each sample / frame is mixed at its own level.
    sigma = float(torch.as_tensor(t).flatten()[-1]) / 1000
    expected = (1 - sigma) * x0[-1, -1] + sigma * noise[-1, -1]
    assert torch.allclose(x_t[-1, -1], expected, atol=1e-6)


def test_add_noise_endpoints_and_dtype():
    x0, noise = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(flow.add_noise(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(flow.add_noise(x0, noise, torch.full((2, 3), 1000.0)), noise)
    out = flow.add_noise(x0.bfloat16(), noise.bfloat16(), torch.tensor([757, 522]))
    assert out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"timestep of shape \(2, 3, 4\) does not fit a tensor of shape \(8, 8\)"):
        flow.add_noise(x0[0, 0, 0], noise[0, 0, 0], torch.zeros(2, 3, 4))


def test_cfg():
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(flow.cfg(cond, uncond, 5.0), uncond + 5.0 * (cond - uncond))
    assert torch.allclose(flow.cfg(cond, uncond, 1.0), cond)
    assert torch.allclose(flow.cfg(cond, uncond, 0.0), uncond)
    # DMD's form cond + s * (cond - uncond) is the same function at scale 1 + s.
    assert torch.allclose(flow.cfg(cond, uncond, 1 + 3.5), cond + 3.5 * (cond - uncond))
    # Guiding flows or guiding x0 (at the same x_t) agree because the weights sum to 1.
    x_t, t = torch.randn(3, 4), torch.full((3,), 600.0)
    a = flow.flow_to_x0(flow.cfg(cond, uncond, 6.0), x_t, t)
    b = flow.cfg(flow.flow_to_x0(cond, x_t, t), flow.flow_to_x0(uncond, x_t, t), 6.0)
    assert torch.allclose(a, b, atol=1e-5)


def test_wan_negative_prompt():
    """The constant is character for character the negative prompt the seeds' config files carry (Wan's
    shared_config.py default), and a config that sets none gets it."""
    from omegaconf import OmegaConf

    from causvid.config import Config

    configs = Path(__file__).resolve().parents[1] / "configs"
    seeds = {OmegaConf.load(f).get("negative_prompt") for f in configs.glob("*.yaml")} - {None}
    assert seeds == {flow.WAN_NEGATIVE_PROMPT}
    assert Config().negative_prompt == flow.WAN_NEGATIVE_PROMPT


# ---------------------------------------------------------------------------------------------------------------
# Samplers on toys with a known exact flow


def _point_mass(c):
    """Exact flow when all data sit at c: x_t = (1 - s) c + s n, so v = n - c = (x_t - c) / s."""
    return lambda x, t: (x - c) / _per_sample_sigma(x, t)


@pytest.mark.parametrize("sampler, sigmas", [
    (flow.euler_sample, flow.euler_sigmas(4, 8.0)),
    (flow.euler_sample, flow.euler_sigmas(1, 1.0)),
    (flow.unipc_sample, flow.sampling_sigmas(4, 5.0)),
    (flow.unipc_sample, flow.sampling_sigmas(50, 5.0)),
])
def test_samplers_exact_on_point_mass(sampler, sigmas):
    c = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    noise = torch.randn_like(c)
    out = sampler(_point_mass(c), noise, sigmas, timesteps=sigmas[:-1] * 1000)
    assert torch.allclose(out, c, atol=1e-10)


MU, STD = 0.7, 0.5


def _gaussian_flow(x, t):
    """E[noise - x0 | x_t] for data ~ N(MU, STD^2) per element."""
    s = _per_sample_sigma(x, t)
    a = 1 - s
    var = a * a * STD**2 + s * s
    return (s - a * STD**2) / var * (x - a * MU) - MU


def _gaussian_endpoint(x, sigma0):
    """Where the probability-flow ODE through x at sigma0 lands: the same quantile of the data distribution."""
    a = 1 - sigma0
    return MU + STD * (x - a * MU) / math.sqrt(a * a * STD**2 + sigma0**2)


def test_samplers_converge_on_gaussian():
    noise = torch.randn(4, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def err(sampler, sigmas):
        out = sampler(_gaussian_flow, noise, sigmas, timesteps=sigmas[:-1] * 1000)
        return (out - _gaussian_endpoint(noise, float(sigmas[0]))).abs().max().item()

    e40, e80 = err(flow.euler_sample, flow.euler_sigmas(40, 1.0)), err(flow.euler_sample, flow.euler_sigmas(80, 1.0))
    assert 1.8 < e40 / e80 < 2.2  # first order
    u80 = err(flow.unipc_sample, flow.sampling_sigmas(80, 1.0))
    assert u80 < 2e-3 and u80 < e80 / 20


# ---------------------------------------------------------------------------------------------------------------
# UniPC against diffusers' UniPCMultistepScheduler (an independent implementation)


def _toy_model(x, t):
    s = _per_sample_sigma(x, t)
    return torch.tanh(1.3 * x) * (0.5 + s) - 0.4 * x * torch.cos(3 * s) + 0.2 * s


def _diffusers_unipc(noise, num_steps, shift, order, variant="bh2", final_sigmas_type="zero"):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        solver_order=order, solver_type=variant, predict_x0=True, lower_order_final=True,
        final_sigmas_type=final_sigmas_type,
    )
    # diffusers 0.42 builds its default flow grid as linspace(1, 1/1000, N + 1)[:-1] (first sigma nudged to
    # 1 - 1e-6), not Wan's linspace(0.999, 0, N + 1)[:-1]; hand it Wan's unshifted grid (it applies flow_shift).
    sched.set_timesteps(sigmas=np.linspace(0.999, 0, num_steps + 1)[:-1])
    x, states = noise, []
    for t in sched.timesteps:
        x = sched.step(_toy_model(x, t.expand(x.shape[0])), t, x).prev_sample
        states.append(x)
    return sched, states


@pytest.mark.parametrize(
    "num_steps, shift, order", [(1, 5.0, 2), (3, 5.0, 2), (10, 3.0, 2), (50, 5.0, 2), (50, 8.0, 3)]
)
def test_unipc_matches_diffusers(num_steps, shift, order):
    noise = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched, ref = _diffusers_unipc(noise, num_steps, shift, order)

    # Same schedule and model timesteps, computed independently (diffusers stores sigmas in float32).
    sigmas = flow.sampling_sigmas(num_steps, shift)
    assert torch.allclose(sched.sigmas.double(), sigmas, atol=1e-7)
    assert torch.equal(sched.timesteps, flow.model_timesteps(sigmas, integer=True))

    # Step by step on diffusers' own sigmas: only float32-vs-float64 coefficient rounding may differ.
    mine = []
    flow.unipc_sample(_toy_model, noise, sched.sigmas, order=order, timesteps=sched.timesteps,
                      callback=lambda d: mine.append(d["x_next"]))
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)

    # End to end on our own schedule.
    wan_t = flow.model_timesteps(sigmas, integer=True)
    out = flow.unipc_sample(_toy_model, noise, sigmas, order=order, timesteps=wan_t)
    assert torch.allclose(out, ref[-1], atol=1e-5, rtol=0)
    assert ref[-1].abs().max() > 0.5  # the comparison is not between two near-zero tensors


def test_unipc_bh1_matches_diffusers_on_nonzero_final_sigma():
    # bh1 uses B(h) = h, which is infinite on a last step to sigma 0 (diffusers then returns NaN); compare it on
    # a schedule that stops at the last nonzero sigma instead.
    noise = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sched, ref = _diffusers_unipc(noise, 12, 5.0, 2, variant="bh1", final_sigmas_type="sigma_min")
    out = flow.unipc_sample(_toy_model, noise, sched.sigmas, variant="bh1", timesteps=sched.timesteps)
    assert torch.allclose(out, ref[-1], atol=1e-5, rtol=0)


def test_unipc_rejects_sigma_one():
    with pytest.raises(ValueError):
        flow.unipc_sample(_toy_model, torch.randn(1, 4), flow.euler_sigmas(4, 5.0))
