"""Every training loss and sampler update against a hand computation written out here from the papers' equations
(never through our own helpers for the expected value): flow matching with both weightings, ODE regression in both
layouts with a t = 0 frame, CausVid's DMD input (data levels and backward simulation), the few-step sampler with
its exit step, the refresh, and V2V's SDEdit noising. The models are stand-ins that record what they are fed and
return a fixed function of it, so the test sees exactly what each stage computes.

Conventions written out: x_t = (1 - s) x0 + s n, the model predicts the flow n - x0, x0 = x_t - s flow; s of a
timestep t is the sigma of the nearest point of the originals' shifted 1000-point grid, s_k = S u / (1 + (S - 1) u),
u = 1 - k / 1000 (`hand_sigma`)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from causvid.config import ConfigError, load_config
from causvid.training.stages import Models, make_stage

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"


def hand_grid(shift):
    """The shifted training grid's sigmas (1000 points, from 1 down), float32 as the originals build it."""
    u = np.linspace(1.0, 0.0, 1001, dtype=np.float32)[:-1]
    return (shift * u / (1 + (shift - 1) * u)).astype(np.float32)


def hand_sigma(t, shift):
    """sigma of the grid point nearest to each t (a tensor); shift None: t / 1000."""
    t = np.asarray(t, dtype=np.float64)
    if shift is None:
        return torch.tensor(t / 1000.0)
    grid = hand_grid(shift).astype(np.float64)
    return torch.tensor(grid[np.abs(1000 * grid[None, :] - t.reshape(-1, 1)).argmin(1)].reshape(t.shape))


def bcast(s):
    """[B, F] -> [B, F, 1, 1, 1]."""
    return s.reshape(*s.shape, 1, 1, 1).double()


class Recorder:
    """A stand-in model: records every call and returns `out(x, t)` (a fixed function of its input)."""

    def __init__(self, out):
        self.out, self.calls = out, []

    def __call__(self, x, t, context, **kw):
        self.calls.append(dict(x=x.detach().clone(), t=t.detach().clone(), context=context, **kw))
        return self.out(x, t)


def pattern(x, t):
    """A flow that depends on x, t and position (so a wrong frame, level or slot shows)."""
    ramp = torch.linspace(-1, 1, x[0].numel()).reshape(x.shape[1:])
    return (0.7 * x + ramp + t.reshape(*t.shape, 1, 1, 1) / 500.0).to(x.dtype)


def latents(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def stage_of(name, *overrides):
    return make_stage(load_config(TINY / f"{name}.yaml", overrides=list(overrides)))


# -- flow matching (the diffusion stage) -------------------------------------------------------------------------

@pytest.mark.parametrize("weighting", ["bump", "uniform"])
def test_diffusion_stage_flow_matching_by_hand(weighting):
    """Causal Forcing stage 1 (teacher forcing, chunks of 3, shift 5): every t the generator sees is a point of
    the shifted grid, one per block; x_t = (1 - s) x0 + s n; loss = mean_{b,f} w(t) |v - (n - x0)|^2 with w
    Self-Forcing's bump exp(-2 ((t - 500) / 1000)^2) minus its minimum, normalised to mean 1 over the grid (or 1);
    the kept sample is x_t - s v."""
    stage = stage_of("ar_diffusion_tf_chunkwise", f"diffusion_loss_weighting={weighting}")
    x0 = latents(4, 6, 16, 4, 4, seed=1)
    batch = {"samples": [0, 1, 2, 3], "clean": x0, "context": latents(4, 16, 32, seed=2)}
    gen = Recorder(pattern)
    loss = stage.generator_loss(Models(gen), batch, step=5)

    (call,) = gen.calls
    t = call["t"]
    off_grid = (t.double().reshape(-1, 1) - 1000 * torch.tensor(hand_grid(5.0)).double()).abs().min(1).values
    assert t.dtype == torch.float32 and off_grid.max() < 1e-3  # on grid points (float32 ulps apart), not between
    assert (t == t[:, [0, 0, 0, 3, 3, 3]]).all() and len(set(t.flatten().tolist())) > 4  # one level per block
    assert torch.equal(call["clean_x"], x0) and call["causal"] and call["num_frame_per_block"] == 3
    n = stage.noise(x0, batch, 5, "noise").double()  # the stage's keyed draw (the draw is not under test)
    s = bcast(hand_sigma(t, 5.0))
    x_t = (1 - s) * x0.double() + s * n
    torch.testing.assert_close(call["x"].double(), x_t, rtol=1e-5, atol=1e-6)
    v = pattern(call["x"], t).double()
    err = (v - (n - x0.double())).pow(2).mean(dim=(2, 3, 4))
    if weighting == "bump":
        g = 1000.0 * hand_grid(5.0).astype(np.float64)
        bump = np.exp(-2 * ((g - 500) / 1000) ** 2)
        table = (bump - bump.min()) / (bump - bump.min()).mean()
        w = torch.tensor(table[np.abs(g[None, :] - t.double().numpy().reshape(-1, 1)).argmin(1)]).reshape(t.shape)
        assert not torch.allclose(w, torch.ones_like(w), atol=0.05)  # the weights differ across these levels
    else:
        w = torch.ones_like(err)
    assert loss.item() == pytest.approx((w * err).mean().item(), rel=1e-5)
    torch.testing.assert_close(stage.last_output.double(), call["x"].double() - s * v, rtol=1e-5, atol=1e-6)


def test_frame_noise_gives_the_picked_clips_a_level_per_frame_by_hand():
    """diffusion_frame_noise_prob (bidirectional teacher): a clip picked with that probability is noised frame by
    frame, each frame at its own grid level (Diffusion Forcing's noise; the clip's shared level is its first
    frame's), the rest as before; the loss is the flow-matching one with each frame's own s."""
    toy_teacher = ROOT / "configs" / "toy" / "teacher.yaml"
    x0 = latents(32, 6, 16, 4, 4, seed=1)
    batch = {"samples": list(range(32)), "clean": x0, "context": latents(32, 8, 32, seed=2),
             "negative": torch.zeros(32, 8, 32)}
    seen = {}
    for prob in (0.0, 0.5, 1.0):
        stage = make_stage(load_config(toy_teacher, overrides=[f"diffusion_frame_noise_prob={prob}",
                                                                "caption_dropout=0"]))
        gen = Recorder(pattern)
        loss = stage.generator_loss(Models(gen), batch, step=5)
        (call,) = gen.calls
        t = seen[prob] = call["t"]
        assert not call["causal"]
        off_grid = (t.double().reshape(-1, 1) - 1000 * torch.tensor(hand_grid(5.0)).double()).abs().min(1).values
        assert off_grid.max() < 1e-3
        n = stage.noise(x0, batch, 5, "noise").double()
        s = bcast(hand_sigma(t, 5.0))
        torch.testing.assert_close(call["x"].double(), (1 - s) * x0.double() + s * n, rtol=1e-5, atol=1e-6)
        err = (pattern(call["x"], t).double() - (n - x0.double())).pow(2).mean(dim=(2, 3, 4))
        assert loss.item() == pytest.approx(err.mean().item(), rel=1e-5)
    shared = (seen[0.0] == seen[0.0][:, :1]).all(1)
    assert shared.all()  # none picked: one level per clip
    assert (seen[1.0] != seen[1.0][:, :1]).any(1).all()  # all picked: the frames' levels differ in every clip
    assert torch.equal(seen[1.0][:, 0], seen[0.0][:, 0])  # a clip's shared level is its first frame's
    picked = (seen[0.5] != seen[0.5][:, :1]).any(1)
    assert 6 <= picked.sum() <= 26  # about half of 32
    assert torch.equal(seen[0.5][picked], seen[1.0][picked]) and torch.equal(seen[0.5][~picked], seen[0.0][~picked])
    for bad, why in (("diffusion_frame_noise_prob=1.5", "probability"), ("causal=true", "bidirectional")):
        with pytest.raises(ConfigError, match=f"diffusion_frame_noise_prob=.*{why}"):
            make_stage(load_config(toy_teacher, overrides=[bad] + ["diffusion_frame_noise_prob=0.5"] * (
                bad.startswith("causal"))))


def test_noisiest_level_has_no_bump_weight_and_unit_uniform_weight():
    """At t = 1000 (the grid's first point) the bump weight is its minimum minus itself: 0."""
    for weighting, expected in (("bump", 0.0), ("uniform", None)):
        stage = stage_of("ar_diffusion_tf_chunkwise", f"diffusion_loss_weighting={weighting}")
        stage.timesteps = torch.full_like(stage.timesteps, 1000.0)
        x0 = latents(1, 6, 16, 4, 4, seed=3)
        batch = {"samples": [0], "clean": x0, "context": torch.zeros(1, 16, 32)}
        loss = stage.generator_loss(Models(Recorder(pattern)), batch, 0)
        n = stage.noise(x0, batch, 0, "noise").double()
        v = pattern(n.float(), torch.full((1, 6), 1000.0)).double()  # x_t = n at sigma 1
        uniform = (v - (n - x0.double())).pow(2).mean().item()
        assert loss.item() == pytest.approx(expected if expected is not None else uniform, rel=1e-5, abs=1e-9)


# -- ODE regression --------------------------------------------------------------------------------------------

def test_ode_regression_causvid_layout_by_hand_with_a_clean_block():
    """CausVid: slots = the listed levels [1000, 757, 522, 0]; a level per block; the input is the slot of that
    level, the target the last slot; blocks drawn at t = 0 are clean context and add nothing to the loss (their
    flow is made huge here, so counting them would show)."""
    stage = stage_of("wan_causal_ode")
    assert stage.grid == 8.0  # CausVid's wrapper grid
    slots = {1000.0: 0, 757.0: 1, 522.0: 2, 0.0: 3}
    ode = latents(4, 4, 6, 16, 4, 4, seed=4)
    batch = {"samples": [0, 1, 2, 3], "ode": ode, "context": latents(4, 16, 32, seed=5)}
    big_at_zero = lambda x, t: pattern(x, t) + 100.0 * (t == 0).float()[..., None, None, None]  # noqa: E731
    gen = Recorder(big_at_zero)
    loss = stage.generator_loss(Models(gen), batch, step=1)  # draws every level, 0 included

    (call,) = gen.calls
    t = call["t"]
    assert (t == t[:, [0, 0, 0, 3, 3, 3]]).all() and (t[:, 0] != t[:, 3]).any()  # one level per block
    assert set(t.flatten().tolist()) <= set(slots) and (t == 0).any() and (t != 0).sum() >= 6
    assert call["clean_x"] is None and call["context"] is batch["context"]
    assert (call["causal"], call["num_frame_per_block"], call["independent_first_frame"]) == (True, 3, False)
    expected_x = torch.stack([torch.stack([ode[b, slots[float(t[b, f])], f] for f in range(6)]) for b in range(4)])
    assert torch.equal(call["x"], expected_x)
    s = bcast(hand_sigma(t, 8.0))
    pred = expected_x.double() - s * big_at_zero(expected_x, t).double()
    err = (pred - ode[:, -1].double()).pow(2).mean(dim=(2, 3, 4))
    keep = t != 0
    assert loss.item() == pytest.approx(err[keep].mean().item(), rel=1e-5)
    assert err[~keep].min() > 1e-2  # the masked frames would have counted
    torch.testing.assert_close(stage.last_output.double(), pred, rtol=1e-5, atol=1e-5)
    stage.generator_loss(Models(gen), batch, step=2)
    assert not torch.equal(gen.calls[-1]["t"], t)  # drawn afresh every step


def test_ode_regression_causal_forcing_layout_by_hand():
    """Causal Forcing: 6 slots [noise, 3 states, ODE output, real latent]; one level per video of the 4 warped
    levels; the target is slot -2 (the ODE output), the real latent (slot -1) is the teacher-forcing context."""
    stage = stage_of("causal_ode_chunkwise")
    levels = [1000 * float(np.float32(5 * u / (1 + 4 * u))) for u in (1.0, 0.75, 0.5, 0.25)]  # warped, shift 5
    ode = latents(4, 6, 6, 16, 4, 4, seed=6)
    batch = {"samples": [0, 1, 2, 3], "ode": ode, "context": latents(4, 16, 32, seed=7)}
    gen = Recorder(pattern)
    loss = stage.generator_loss(Models(gen), batch, step=1)

    (call,) = gen.calls
    t = call["t"]
    assert (t == t[:, :1]).all() and len(set(t[:, 0].tolist())) > 1  # one level per video
    assert call["context"] is batch["context"] and call["causal"] is True and call["num_frame_per_block"] == 3
    slot = [min(range(4), key=lambda i: abs(levels[i] - float(tb))) for tb in t[:, 0]]
    assert all(abs(levels[i] - float(tb)) < 1e-3 for i, tb in zip(slot, t[:, 0]))
    expected_x = torch.stack([ode[b, slot[b]] for b in range(4)])
    assert torch.equal(call["x"], expected_x) and torch.equal(call["clean_x"], ode[:, 5])
    pred = expected_x.double() - bcast(hand_sigma(t, 5.0)) * pattern(expected_x, t).double()
    assert loss.item() == pytest.approx((pred - ode[:, 4].double()).pow(2).mean().item(), rel=1e-5)


def test_ode_regression_loss_masks_exactly_the_t0_frames():
    from causvid.training.losses import ode_regression_loss

    pred, target = latents(2, 3, 2, 1, 1, seed=8), latents(2, 3, 2, 1, 1, seed=9)
    t = torch.tensor([[0.0, 757.0, 522.0], [1000.0, 0.0, 0.0]])
    per_frame = ((pred - target) ** 2).mean(dim=(2, 3, 4))
    expected = (per_frame[0, 1] + per_frame[0, 2] + per_frame[1, 0]) / 3
    assert ode_regression_loss(pred, target, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert ode_regression_loss(pred, target, torch.zeros(2, 3)).item() == 0.0  # all context: no loss, no NaN
    one = torch.tensor([[0.0, 0.0, 0.0], [0.0, 522.0, 0.0]])  # a single frame counts: its error, not half of it
    assert ode_regression_loss(pred, target, one).item() == pytest.approx(per_frame[1, 1].item(), rel=1e-6)


# -- DMD: CausVid's generator input ---------------------------------------------------------------------------

def test_dmd_causvid_data_input_by_hand():
    """CausVid DMD on data: each listed level > 0 is the clean latent noised to it (x_t = (1 - s) x0 + s n on the
    shift-8 grid), level 0 the clean latent itself; one level per block; the sample is x_t - s(t) v, with the
    grid's smallest sigma at t = 0."""
    stage = stage_of("wan_causal_dmd")
    clean = latents(3, 6, 16, 4, 4, seed=10)
    batch = {"samples": [0, 1, 2], "clean": clean, "context": latents(3, 16, 32, seed=11)}
    gen = Recorder(pattern)
    out = stage.generate(Models(gen), batch, step=3)

    (call,) = gen.calls
    t = call["t"]
    levels = [1000.0, 757.0, 522.0, 0.0]
    assert (t == t[:, [0, 0, 0, 3, 3, 3]]).all() and set(t.flatten().tolist()) <= set(levels)
    assert call["context"] is batch["context"] and (call["causal"], call["num_frame_per_block"]) == (True, 3)
    assert len(set(t.flatten().tolist())) >= 3
    x = torch.empty_like(clean, dtype=torch.float64)
    for b in range(3):
        for f in range(6):
            i = levels.index(float(t[b, f]))
            if levels[i] == 0:
                x[b, f] = clean[b, f]
            else:
                n = stage.noise(clean, batch, 3, "generator", "level", i)[b, f]
                s = float(hand_sigma(levels[i], 8.0))
                x[b, f] = (1 - s) * clean[b, f].double() + s * n.double()
    torch.testing.assert_close(call["x"].double(), x, rtol=1e-5, atol=1e-6)
    expected = x - bcast(hand_sigma(t, 8.0)) * pattern(call["x"], t).double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clean_level", [False, True])
def test_dmd_backward_simulation_input_by_hand(clean_level):
    """Bidirectional DMD with backward simulation: the generator's own no-grad run from noise over [1000, 757,
    522] (x0 = x - s v, re-noised to the next level), then one level per video whose state (the input the run
    saw there) is denoised once more with gradient. A trailing 0 in the list (CausVid's) makes the run's clean
    end a level too, denoised at the grid's smallest sigma."""
    stage = stage_of("wan_bidirectional_dmd", *(["denoising_step_list=[1000,757,522,0]"] if clean_level else []))
    batch = {"samples": [0, 1, 2, 3, 4, 5, 6, 7], "context": latents(8, 16, 32, seed=12)}
    gen = Recorder(pattern)
    out = stage.generate(Models(gen), batch, step=4)
    assert all(c["context"] is batch["context"] and c["causal"] is False for c in gen.calls)

    levels = [1000.0, 757.0, 522.0]
    frames = stage.shape[0]
    x = stage.noise(torch.empty(8, *stage.shape), batch, 4, "generator", "noise").double()
    states = []
    for i, level in enumerate(levels):
        states.append(x)
        x0 = x - float(hand_sigma(level, 8.0)) * pattern(x.float(), torch.full((8, frames), level)).double()
        if i + 1 < len(levels):
            n = stage.noise(x0, batch, 4, "generator", "sim", 0, i).double()
            s = float(hand_sigma(levels[i + 1], 8.0))
            x = (1 - s) * x0 + s * n
    assert [float(c["t"][0, 0]) for c in gen.calls[:3]] == levels
    if clean_level:
        levels, states = levels + [0.0], states + [x0]
    t = gen.calls[-1]["t"]
    assert (t == t[:, :1]).all() and len(gen.calls) == 4
    assert set(t[:, 0].tolist()) == set(levels)  # every level drawn in this batch, 0 included
    pick = torch.stack([states[levels.index(float(t[b, 0]))][b] for b in range(8)])
    torch.testing.assert_close(gen.calls[-1]["x"].double(), pick, rtol=1e-5, atol=1e-5)
    expected = pick - bcast(hand_sigma(t, 8.0)) * pattern(gen.calls[-1]["x"], t).double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


# -- the few-step sampler and the refresh --------------------------------------------------------------------

def keyed_noise(like, tag):
    seed = 1 + 100 * tag[0] + (tag[1] if isinstance(tag[1], int) else 50)
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed)).to(like.dtype)


@pytest.mark.parametrize("grid", [None, 5.0])
def test_few_step_sampler_by_hand(grid):
    """x0_i = x_i - s(t_i) v(x_i, t_i); x_{i+1} = (1 - s(t_{i+1})) x0_i + s(t_{i+1}) n_i; the last x0 is the
    output. Blocks 0 and 1 run their own lists (a per-block schedule), block 2 the main one; with an exit step the
    run stops there and only that step has a graph."""
    from causvid.pipelines.rollout import few_step_sampler

    steps, leading = [1000.0, 750.0, 400.0], [[1000.0, 900.0, 600.0, 300.0], [1000.0, 500.0]]
    noise = latents(2, 3, 4, 2, 2, seed=13)

    def by_hand(block_steps, block, last):
        x, seen = noise.double(), []
        for i, step in enumerate(block_steps[:last + 1]):
            seen.append(x)
            x0 = x - float(hand_sigma(step, grid)) * pattern(x.float(), torch.full((2, 3), step)).double()
            if i < last:
                s = float(hand_sigma(block_steps[i + 1], grid))
                x = (1 - s) * x0 + s * keyed_noise(x0, (block, i)).double()
        return x0, seen

    for block, exit_ in ((0, None), (1, None), (1, 1), (2, None), (2, 0)):
        trajectory = []
        sampler = few_step_sampler(steps, leading, noise_fn=keyed_noise, grid=grid, trajectory=trajectory,
                                   exit_step=None if exit_ is None else (lambda b, e=exit_: e))
        block_steps = leading[block] if block < 2 else steps
        last = len(block_steps) - 1 if exit_ is None else exit_
        w = torch.zeros((), requires_grad=True)
        out = sampler(lambda x, t: pattern(x, t) * (1 + w), noise, block)
        expected, seen = by_hand(block_steps, block, last)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        assert len(trajectory) == len(seen)
        for a, b in zip(trajectory, seen):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
        if exit_ is not None:  # the gradient comes from the exit step alone: d out / d w = -s(t_exit) v(x_exit)
            out.sum().backward()
            t_exit = block_steps[last]
            v = pattern(seen[-1].float(), torch.full((2, 3), t_exit)).double()
            assert w.grad.item() == pytest.approx(-(float(hand_sigma(t_exit, grid)) * v).sum().item(), rel=1e-4)


@pytest.mark.parametrize("noise_context", [False, True])
def test_refresh_pass_by_hand(noise_context):
    """After a block is sampled the model is run once more on it at t = context_noise: on the clean block
    (inference), or (training, noise_context) on it noised to context_noise on the grid, (1 - s) x0 + s n."""
    from causvid.pipelines.rollout import Rollout, few_step_sampler
    from causvid.tiny_wan.dit import random_dit

    model = random_dit("tiny", seed=2, text_len=16)
    calls, forward = [], model.forward
    model.forward = lambda x, t, ctx, **kw: calls.append((x.clone(), t.clone(), kw["start_frame"])) or forward(
        x, t, ctx, **kw)
    context = latents(1, 16, 32, seed=15)
    rollout = Rollout(model, context, batch=1, num_frame_per_block=2, max_frames=4,
                      sampler=few_step_sampler([1000.0], noise_fn=keyed_noise, grid=5.0), context_noise=120.0,
                      noise_context=noise_context, grid=5.0, noise_fn=keyed_noise)
    noise = latents(1, 2, 16, 4, 4, seed=14)
    with torch.no_grad():
        x0 = rollout.step(noise)
        (x_seen, t_seen, _), (refresh, t, start) = calls
        flow = forward(noise, t_seen, context, cache=model.new_cache(1, max_frames=4),
                       start_frame=0)
    assert torch.equal(x_seen, noise) and torch.equal(t_seen, torch.full((1, 2), 1000.0))
    torch.testing.assert_close(x0.double(), noise.double() - flow.double() * float(hand_sigma(1000.0, 5.0)))
    assert torch.equal(t, torch.full((1, 2), 120.0)) and start == 0
    if noise_context:
        s = float(hand_sigma(120.0, 5.0))
        expected = (1 - s) * x0.double() + s * keyed_noise(x0, (0, "context")).double()
    else:
        expected = x0.double()
    torch.testing.assert_close(refresh.double(), expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        rollout.step(noise)
    assert [c[2] for c in calls] == [0, 0, 2, 2] and rollout.frame == 4


# -- the small pieces ------------------------------------------------------------------------------------------

def test_blockwise_repeats_each_blocks_first_value():
    from causvid.training.losses import blockwise

    values = torch.arange(14.0).reshape(2, 7)
    assert blockwise(values[:, :6], 3).tolist() == [[0, 0, 0, 3, 3, 3], [7, 7, 7, 10, 10, 10]]
    assert blockwise(values, 3, independent_first_frame=True).tolist() == [[0, 1, 1, 1, 4, 4, 4],
                                                                            [7, 8, 8, 8, 11, 11, 11]]


def test_euler_step_and_consistency_loss_by_hand():
    """x_next = x_t + (t_next - t) / 1000 * v (Song et al. 2023, eq. 6) in float64, returned in x_t's dtype; the CD
    loss is the mean squared x0 difference, with x_next itself as the target where t_next = 0."""
    from causvid.training.losses import consistency_distillation_loss, euler_step

    x_t, v = latents(1, 2, 3, 2, 2, seed=20), latents(1, 2, 3, 2, 2, seed=21)
    t, t_next = torch.tensor([[900.0, 500.0]]), torch.tensor([[700.0, 0.0]])
    expected = x_t.double() + torch.tensor([-0.2, -0.5], dtype=torch.float64).reshape(1, 2, 1, 1, 1) * v.double()
    torch.testing.assert_close(euler_step(x_t, v, t, t_next).double(), expected, rtol=1e-6, atol=1e-7)
    assert euler_step(x_t.bfloat16(), v, t, t_next).dtype == torch.bfloat16
    student, target = latents(1, 2, 3, 2, 2, seed=22), latents(1, 2, 3, 2, 2, seed=23)
    x_next = euler_step(x_t, v, t, t_next)
    by_hand = torch.cat([(student[:, :1] - target[:, :1]), (student[:, 1:] - x_next[:, 1:])], 1).pow(2).mean()
    got = consistency_distillation_loss(student, target, x_next, t_next)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)


# -- the draws' keys ---------------------------------------------------------------------------------------------

KEYED = [(p.stem, ()) for p in sorted(TINY.glob("*.yaml")) if "14b" not in p.stem] + [
    ("self_forcing_dmd", ("same_step_across_blocks=false",)),  # an exit step per block
    ("self_forcing_dmd", ("denoising_step_list_per_block=[[1000,750,500,250],[1000,500]]",  # two leading lists
                          "denoising_step_list=[1000]", "same_step_across_blocks=false")),
]


@pytest.mark.parametrize("name, overrides", KEYED)
def test_every_draw_is_keyed_by_its_step_and_no_two_draws_share_a_key(name, overrides, monkeypatch):
    """The contract of `causvid.rng`: every random draw of a step is keyed by (seed, step, ..., purpose, sample)
    (the same whatever the batch or process layout, fresh at every step), and no two draws of a step, the
    generator's and the critic's updates together, share a key (they would be the same noise). The purposes'
    names are free (any distinct name keys an independent draw). Nothing is drawn from torch's global generator:
    a step run again gives the same losses."""
    from collections import Counter

    from causvid import rng
    from causvid.tiny_wan.dit import random_dit

    keys, real_generator = [], rng.generator
    monkeypatch.setattr(rng, "generator", lambda *key: keys.append(key) or real_generator(*key))
    stage = stage_of(name, *overrides)
    cfg = stage.cfg
    shape = list(cfg.image_or_video_shape)[1:]
    batch = {"samples": [3, 8], "clean": latents(2, *shape, seed=1), "context": latents(2, 16, 32, seed=2),
             "negative": latents(2, 16, 32, seed=3)}
    if stage.data == "ode":
        slots = len(stage.times) + (2 if stage.layout == "causal_forcing" else 0)
        batch["ode"] = latents(2, slots, *shape, seed=4)
    model = random_dit("tiny", seed=0, text_len=16)
    models = Models(model, fake_score=model, real_score=model, teacher=model, target=model)
    def losses():
        with torch.no_grad():
            return [stage.generator_loss(models, batch, step=7)] + (
                [stage.critic_loss(models, batch, step=7)] if stage.has_critic else [])

    first = losses()
    assert keys and all(key[:2] == (cfg.seed, 7) for key in keys), keys
    torch.manual_seed(123)  # no draw from torch's global generator: the step again gives the same losses
    assert [float(v) for v in losses()] == [float(v) for v in first]
    keys = keys[:len(keys) // 2]
    # the one key read more than once: a rollout's exit step (same_step_across_blocks), read again for each block
    repeated = {k for k, c in Counter(keys).items() if c > 1}
    shared = {(cfg.seed, 7, role, "exit") for role in ("generator", "critic")} if cfg.same_step_across_blocks else set()
    assert repeated <= shared, repeated


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_caption_dropout_trains_the_drawn_samples_on_the_negative_prompt(p):
    """caption_dropout p: a sample whose keyed uniform draw u < p is trained unconditionally (its context replaced
    by the negative prompt's), all its frames; p = 0 needs no negative prompt, p = 1 drops every sample."""
    stage = stage_of("ar_diffusion_tf_chunkwise", f"caption_dropout={p}")
    assert stage.needs_negative == (p > 0)
    samples = list(range(8))
    ctx, neg = latents(8, 16, 32, seed=20), latents(8, 16, 32, seed=21)
    batch = {"samples": samples, "clean": latents(8, 6, 16, 4, 4, seed=22), "context": ctx, "negative": neg}
    gen = Recorder(pattern)
    stage.generator_loss(Models(gen), batch, step=3)
    u = stage.uniform((1,), batch, 3, "caption_dropout", device="cpu")[:, 0]  # the keyed draw (not under test)
    dropped = [bool(u[i] < p) for i in samples]
    got = gen.calls[0]["context"]
    for i in samples:
        assert torch.equal(got[i], neg[i] if dropped[i] else ctx[i]), i
    assert 0 < sum(dropped) < 8 if p == 0.5 else sum(dropped) == 8 * p


def test_dmd_timesteps_by_hand():
    """One t per video, as the originals draw it: u on a 1/1000 grid (floor), shifted, clamped to [20, 980]
    (both ends reached over 2,000 videos)."""
    stage = stage_of("self_forcing_dmd")  # timestep_shift 5
    batch = {"samples": list(range(2000))}
    t = stage.dmd_timesteps(torch.zeros(2000, 3), batch, 5, "dmd_t")
    u = stage.uniform((1,), batch, 5, "dmd_t", device="cpu").double()  # the keyed draw (not under test)
    u = torch.floor(u * 1000) / 1000
    expected = (1000 * 5 * u / (1 + 4 * u)).clamp(20, 980).expand(-1, 3)
    torch.testing.assert_close(t.double(), expected, rtol=1e-6, atol=1e-4)
    assert float(t.min()) == 20.0 and float(t.max()) == 980.0


def test_noise_takes_the_dtype_and_shape_of_what_it_is_like():
    """A stage's keyed noise for a bfloat16 latent is bfloat16 (the float32 draw, rounded), per sample."""
    stage = stage_of("self_forcing_dmd")
    batch = {"samples": [4, 7]}
    exact = stage.noise(torch.zeros(2, 3, 2), batch, 1, "x")
    half = stage.noise(torch.zeros(2, 3, 2, dtype=torch.bfloat16), batch, 1, "x")
    assert exact.dtype == torch.float32 and half.dtype == torch.bfloat16 and torch.equal(half, exact.bfloat16())
    assert not torch.equal(exact[0], exact[1])  # each sample its own draw


def test_the_diffusion_stage_on_the_first_frame_alone_and_without_teacher_forcing():
    """Self-Forcing's [1, 3, 3] layout: a level per block, frame 0 its own; the generator is told the layout.
    Without teacher forcing the generator gets no clean context."""
    stage = stage_of("ar_diffusion_tf_chunkwise", "independent_first_frame=true", "teacher_forcing=false",
                     "image_or_video_shape=[1,7,16,4,4]", "num_training_frames=7")
    x0 = latents(8, 7, 16, 4, 4, seed=30)
    batch = {"samples": list(range(8)), "clean": x0, "context": latents(8, 16, 32, seed=31)}
    gen = Recorder(pattern)
    stage.generator_loss(Models(gen), batch, step=2)
    (call,) = gen.calls
    t = call["t"]
    assert (t == t[:, [0, 1, 1, 1, 4, 4, 4]]).all()
    assert (t[:, 0] != t[:, 1]).any() and (t[:, 1] != t[:, 4]).any()
    assert call["clean_x"] is None and call["independent_first_frame"] is True and call["num_frame_per_block"] == 3


def test_last_step_only_exits_every_block_at_its_last_step():
    stage = stage_of("causal_forcing_dmd_framewise_1step", "last_step_only=true")  # block 0: 4 steps, then 1
    assert [stage.exit_step(7, "generator", b) for b in range(3)] == [3, 0, 0]


def test_a_dmd_stage_reads_what_its_input_needs_and_warps_the_listed_levels_when_asked():
    """CausVid's data input trains on latents (the trainer opens an LMDB), every other DMD input on prompts; the
    listed levels are warped onto the shifted grid when warp_denoising_step is set, the trailing 0 kept."""
    from causvid.flow import warp_denoising_step

    assert stage_of("wan_causal_dmd").data == "latents" and stage_of("self_forcing_dmd").data == "prompts"
    assert stage_of("wan_causal_dmd").times == [1000.0, 757.0, 522.0, 0.0]
    warped = stage_of("wan_causal_dmd", "warp_denoising_step=true").times
    assert warped == warp_denoising_step([1000.0, 757.0, 522.0], 8.0).tolist() + [0.0] and warped[1] != 757.0
