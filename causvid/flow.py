"""Flow matching for Wan2.1, as small pure functions of tensors.

Conventions (Wan2.1, CausVid, Self-Forcing):

* ``x_t = (1 - sigma) * x0 + sigma * noise`` with sigma in [0, 1]; sigma = 1 is pure noise.
* The DiT predicts the flow ``v = noise - x0``, so ``x0 = x_t - sigma * v``.
* The DiT is conditioned on the timestep ``t = 1000 * sigma`` (0..1000). Functions that take ``t`` use this
  scale because that is what step lists (``[1000, 757, 522, 0]``) and the model speak; samplers take ``sigmas``
  because that is what the ODE is written in.
* Schedules are shifted with ``sigma' = s * sigma / (1 + (s - 1) * sigma)``, which spends more steps at high
  noise, where large video latents need them.

Schedules are returned as float64 CPU tensors: the originals compute them in float32 (Self-Forcing/CausVid
``FlowMatchScheduler``) or float64 (Wan's UniPC), and float64 keeps both within one float32 ulp.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from causvid.wan_conventions import NUM_TRAIN_TIMESTEPS, WAN_NEGATIVE_PROMPT, check_step_list  # noqa: F401

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def shift_sigma(sigma, shift: float):
    """Shift noise levels toward 1: ``s * sigma / (1 + (s - 1) * sigma)``.

    Fixes 0 and 1 and is the identity at ``shift == 1``. Works on floats and tensors. Applying it to ``t / 1000``
    and scaling back is how CausVid/Self-Forcing shift sampled training timesteps.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def sampling_sigmas(num_steps: int, shift: float, sigma_max: float = 0.999) -> torch.Tensor:
    """Wan2.1's T2V sampling schedule for its UniPC solver: ``num_steps + 1`` sigmas ending in 0.

    ``shift(linspace(sigma_max, 0, N + 1)[:-1])`` followed by a final 0. Wan's ``FlowUniPCMultistepScheduler``
    takes sigma_max = 0.999 (the top of its 1000-step training grid) rather than 1 because UniPC works in
    log-SNR, ``log((1 - sigma) / sigma)``, which is -inf at sigma = 1. Wan's defaults: 50 steps, shift 5.

    Note: diffusers 0.42's ``UniPCMultistepScheduler(use_flow_sigmas=True)`` builds its default grid differently
    (``linspace(1, 1/1000, N + 1)[:-1]``, first sigma nudged to 1 - 1e-6); to reproduce Wan with it, pass
    ``set_timesteps(sigmas=linspace(0.999, 0, N + 1)[:-1])`` (it applies ``flow_shift`` itself).
    """
    sigmas = torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigma(sigmas, shift), sigmas.new_zeros(1)])


def euler_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """The Euler schedule of Self-Forcing/CausVid's ``FlowMatchScheduler``: ``num_steps + 1`` sigmas ending in 0.

    That scheduler (sigma_max 1, sigma_min 0, ``extra_one_step=True``) uses ``shift(linspace(1, 0, N + 1)[:-1])``
    and steps the last one to 0; the timesteps it feeds the model are ``1000 * sigma``.
    It is also where CausVid's step list comes from: ODE pairs are generated with 50 steps at shift 8, and
    ``[1000, 757, 522]`` are entries 0, 36 and 44 of it (1000, 756.76, 521.74); Causal Forcing's 48-step shift-5
    ODE run has the warped 4-step list ([1000, 937.5, 833.3, 625]) at entries 0, 12, 24, 36.
    """
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigma(sigmas, shift), sigmas.new_zeros(1)])


def _grid_sigmas(shift: float, num_train_timesteps: int) -> torch.Tensor:
    """The training grid's sigmas computed in float32, as the originals' ``FlowMatchScheduler`` does."""
    sigmas = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float32)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_timesteps(shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The shifted 1000-step training grid, descending from 1000 to ``1000 * shift(0.001)`` (4.98 at shift 5).

    Self-Forcing and CausVid build their ``FlowMatchScheduler`` with ``set_timesteps(1000, training=True)``;
    this grid is what ``warp_denoising_step`` indexes into (and what their ``add_noise`` and flow -> x0 snap
    timesteps to: ``grid_sigma``). Computed in float32 as theirs is (CausVid's warped 727.27277, not the
    float64 727.27271), returned as float64 holding those exact values.
    """
    return (_grid_sigmas(shift, num_train_timesteps) * num_train_timesteps).double()


def grid_sigma(t, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """sigma of the grid point nearest to each timestep ``t`` (any shape), as the originals' scheduler finds it
    (``argmin |timesteps - t|``, then ``sigmas[index]``): float32, on ``t``'s device.

    Off-grid timesteps move by up to half a grid step: CausVid's 757 reads as 756.757 on its shift-8 grid, and
    t = 0 as the grid's last point, 7.944 at shift 8 and 4.98 at shift 5 (sigma 0.00794 / 0.00498), so the
    originals' "clean" training inputs carry a little noise and their x0 of a clean frame is x - sigma * flow.
    """
    t = torch.as_tensor(t)
    sigmas = _grid_sigmas(shift, num_train_timesteps).to(t.device)
    index = (sigmas[None, :] * num_train_timesteps - t.reshape(-1, 1).float()).abs().argmin(dim=1)
    return sigmas[index].reshape(t.shape)


def warp_denoising_step(step_list, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Map integer timesteps through the shifted training grid, as Self-Forcing's ``warp_denoising_step`` does.

    The grid is ``training_timesteps(shift)`` with a 0 appended, and step ``t`` becomes ``grid[1000 - t]``; that is
    ``1000 * shift_sigma(t / 1000)``, i.e. the list is read as *unshifted* timesteps. Warping lets a config say
    "evenly spaced" and get the shifted spacing the teacher was trained with:
    ``[1000, 750, 500, 250]`` -> ``[1000, 937.5, 833.3, 625]`` at shift 5, ``[1000, 960, 888.9, 727.3]`` at shift 8.
    Entries must be integers in ``[0, num_train_timesteps]`` because they are indices.
    """
    steps = torch.as_tensor(step_list, dtype=torch.float64).flatten()
    if not torch.equal(steps, steps.round()) or steps.min() < 0 or steps.max() > num_train_timesteps:
        raise ValueError(f"warp needs integer timesteps in [0, {num_train_timesteps}], got {step_list}")
    grid = torch.cat([training_timesteps(shift, num_train_timesteps), torch.zeros(1, dtype=torch.float64)])
    return grid[num_train_timesteps - steps.long()]


def normalize_step_list(steps, warp: bool = False, shift: float | None = None) -> list[float]:
    """The timesteps a few-step generator is actually run at, from either config convention.

    CausVid lists end in 0 (``[1000, 757, 522, 0]``): the 0 marks "clean" and is never sampled at. Self-Forcing
    lists do not (``[1000, 750, 500, 250]``) and are usually warped (``warp_denoising_step``). This drops a trailing
    0, then warps if asked (warping requires ``shift``), and returns plain floats in decreasing order.
    """
    steps = check_step_list(steps.tolist() if isinstance(steps, torch.Tensor) else steps)
    if warp:
        if shift is None:
            raise ValueError("warp=True needs the timestep shift")
        steps = warp_denoising_step(steps, shift).tolist()
    return steps


def model_timesteps(sigmas: torch.Tensor, integer: bool = False) -> torch.Tensor:
    """The timestep fed to the DiT at each step of a schedule: ``1000 * sigmas[:-1]``.

    ``integer=True`` truncates to int64 as Wan's FlowUniPC (and diffusers' UniPC) do; the Euler
    ``FlowMatchScheduler`` of CausVid/Self-Forcing feeds the float value. Only the model input changes; the
    solver always uses the exact sigmas.
    """
    t = torch.as_tensor(sigmas, dtype=torch.float64)[:-1] * NUM_TRAIN_TIMESTEPS
    return t.long() if integer else t.float()


# ----------------------------------------------------------------------------------------------------------------
# Noising and parameterisation


def _sigma_like(t, x: torch.Tensor, dtype: torch.dtype, grid: float | None = None) -> torch.Tensor:
    """sigma of ``t`` as a tensor that broadcasts over the trailing dims of ``x`` (t: scalar, [B] or [B, F]):
    ``t / 1000``, or with ``grid`` (a shift) the sigma of the nearest point of that shifted training grid."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim > x.ndim:
        raise ValueError(f"timestep of shape {tuple(t.shape)} does not fit a tensor of shape {tuple(x.shape)}")
    sigma = (t.to(dtype) / NUM_TRAIN_TIMESTEPS) if grid is None else grid_sigma(t, grid).to(dtype)
    return sigma.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t, grid: float | None = None) -> torch.Tensor:
    """Noise clean latents to timestep ``t``: ``(1 - sigma) * x0 + sigma * noise`` (rectified flow, Liu et al.
    2022, eq. 1) with ``sigma = t / 1000``.

    ``t`` is a scalar, [B] or [B, F] (per-frame levels for causal blocks) and broadcasts over the trailing dims of
    a [B, F, C, H, W] latent. The mix is computed in at least float32 (sigma in bf16 would be off by up to 4e-3)
    and returned in ``x0``'s dtype. ``grid`` (a shift): snap ``t`` to the nearest point of that shifted
    1000-point training grid first, as Self-Forcing / CausVid's scheduler does (``grid_sigma``).
    """
    dtype = torch.promote_types(x0.dtype, torch.float32)
    sigma = _sigma_like(t, x0, dtype, grid)
    return ((1 - sigma) * x0.to(dtype) + sigma * noise.to(dtype)).to(x0.dtype)


def flow_to_x0(flow: torch.Tensor, x_t: torch.Tensor, t, grid: float | None = None) -> torch.Tensor:
    """Clean-latent prediction from a flow prediction: ``x0 = x_t - sigma * flow``.

    Computed in float64, as the Wan wrappers of CausVid/Self-Forcing do, because the DiT runs in bf16 and the
    difference of two large bf16 terms would lose most of x0's precision; returned in ``flow``'s dtype.
    ``grid`` (a shift): sigma of the nearest grid point, as those wrappers take it (see ``add_noise``).
    """
    sigma = _sigma_like(t, x_t, torch.float64, grid)
    return (x_t.double() - sigma * flow.double()).to(flow.dtype)


def x0_to_flow(x0: torch.Tensor, x_t: torch.Tensor, t, min_sigma: float = 0.0,
               grid: float | None = None) -> torch.Tensor:
    """Flow implied by a clean-latent prediction: ``flow = (x_t - x0) / sigma`` (inverse of ``flow_to_x0``).

    Undefined at ``t = 0``; ``min_sigma`` > 0 divides by ``max(sigma, min_sigma)`` instead, which keeps it finite
    (and exact for ``sigma >= min_sigma``). Computed in float64, returned in ``x0``'s dtype. ``grid`` as above.
    """
    sigma = _sigma_like(t, x_t, torch.float64, grid).clamp(min=min_sigma)
    return ((x_t.double() - x0.double()) / sigma).to(x0.dtype)


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in Wan's form: ``uncond + scale * (cond - uncond)``; scale 1 gives ``cond``.

    CausVid/Self-Forcing's DMD writes ``cond + s * (cond - uncond)``: that is this function with ``scale = 1 + s``
    (so ``real_guidance_scale: 3.5`` means Wan-style 4.5). Since the weights sum to 1 and x0 is affine in the
    flow at fixed ``x_t``, guiding flows or guiding x0 predictions gives the same result.
    """
    return uncond + scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------------------------
# Samplers. model_fn(x, t) returns the flow; t has shape [B] and is 1000 * sigma unless `timesteps` is given.


def _step_timesteps(sigmas: torch.Tensor, timesteps) -> torch.Tensor:
    ts = model_timesteps(sigmas) if timesteps is None else torch.as_tensor(timesteps)
    if ts.shape != (len(sigmas) - 1,):
        raise ValueError(f"need one timestep per step ({len(sigmas) - 1}), got shape {tuple(ts.shape)}")
    return ts


@torch.no_grad()
def euler_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    timesteps: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """First-order flow ODE solve from ``noise`` at ``sigmas[0]`` down to ``sigmas[-1]``.

    ``x <- x + (sigma_next - sigma) * flow``, as the ``FlowMatchScheduler.step`` that CausVid and Causal Forcing
    use to make ODE pairs. Exact for straight paths (a point-mass data distribution). Pass float32 noise: the
    state keeps ``noise``'s dtype. ``callback`` gets a dict with ``i``, ``sigma``, ``t``, ``x`` (the state the
    model saw, i.e. the trajectory), ``x0`` and ``x_next``.
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
    ts = _step_timesteps(sigmas, timesteps)
    x = noise
    for i in range(len(sig) - 1):
        t = ts[i].to(x.device).expand(x.shape[0])
        flow = model_fn(x, t)
        x_next = x + (sig[i + 1] - sig[i]) * flow
        if callback is not None:
            callback({"i": i, "sigma": sig[i], "t": t, "x": x, "x0": x - sig[i] * flow, "x_next": x_next})
        x = x_next
    return x


def _log_snr(sigma: float) -> float:
    """UniPC's time variable for flow paths: lambda = log(alpha / sigma) with alpha = 1 - sigma (+inf at 0)."""
    if sigma <= 0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


def _unipc_rhos(rs: list[float], hh: float, b_h: float) -> list[float]:
    """Weights of the difference terms: solve ``sum_k rho_k r_k^i = b_i`` (i < K) for the K nodes ``rs``.

    ``b_i = (i + 1)! * hh * phi_{i+2}(hh) / B(h)``, built by the recursion below. A single node
    uses 1/2 (the h -> 0 limit), as the UniPC reference implementation and Wan do for order-2 prediction and
    order-1 correction.
    """
    if len(rs) <= 1:
        return [0.5] * len(rs)
    b, g, fact = [], math.expm1(hh) / hh - 1, 1.0
    for i in range(len(rs)):
        b.append(g * fact / b_h)
        fact *= i + 2
        g = g / hh - 1 / fact
    r_mat = torch.tensor([[r**i for r in rs] for i in range(len(rs))], dtype=torch.float64)
    return torch.linalg.solve(r_mat, torch.tensor(b, dtype=torch.float64)).tolist()


def _unipc_update(x, sig, lam, s, t, hist, order, variant, x0_at_t=None):
    """One UniPC update of ``x`` from step ``s`` to step ``t`` in the data-prediction (x0) form.

    ``hist`` holds ``(step, x0)`` pairs, newest first, with ``hist[0]`` at step ``s``; ``order - 1`` older ones are
    used as extra nodes. Without ``x0_at_t`` this is the predictor UniP; with it (the model's x0 at ``t``, which
    costs no extra call because it is the next step's evaluation) it is the corrector UniC, which adds that node
    at ``r = 1`` and raises the order by one.
    """
    h = lam[t] - lam[s]
    hh = -h
    phi1 = math.expm1(hh)
    b_h = phi1 if variant == "bh2" else hh
    m0 = hist[0][1]
    rs, ds = [], []
    for step, xk in hist[1:order]:
        r = (lam[step] - lam[s]) / h
        rs.append(r)
        ds.append((xk - m0) / r)
    if x0_at_t is not None:
        rs.append(1.0)
        ds.append(x0_at_t - m0)
    alpha_t = 1 - sig[t]
    out = (sig[t] / sig[s]) * x - (alpha_t * phi1) * m0
    for rho, d in zip(_unipc_rhos(rs, hh, b_h), ds):
        out = out - (alpha_t * b_h * rho) * d
    return out


@torch.no_grad()
def unipc_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    timesteps: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Multistep UniPC (predict-x0, one model call per step) from ``noise`` at ``sigmas[0]`` to ``sigmas[-1]``.

    Wan2.1's default T2V sampler: ``order=2``, ``variant="bh2"``, ``lower_order_final=True`` with
    ``sigmas = sampling_sigmas(50, 5)`` and ``timesteps = model_timesteps(sigmas, integer=True)``. Each step turns
    the flow into x0, corrects the previous predictor output with it (UniC), then predicts the next state (UniP)
    from the last ``order`` x0's. The first steps warm up at lower order, and ``lower_order_final`` drops to first
    order for the last steps: the last step to sigma 0 then returns the x0 prediction, where a higher-order
    extrapolation would divide by an infinite log-SNR step.

    ``sigmas[0]`` must be below 1 (log-SNR is -inf at 1; Wan starts at 0.999). Pass float32 noise.
    ``callback`` gets ``i``, ``sigma``, ``t``, ``x`` (the state the model saw), ``x0`` and ``x_next``
    (the predictor output, before the next step's correction).
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
    if sig[0] >= 1:
        raise ValueError("UniPC needs sigmas[0] < 1; use sampling_sigmas (sigma_max 0.999)")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if not lower_order_final and order > 1 and sig[-1] == 0:
        raise ValueError("a schedule ending at sigma 0 needs lower_order_final=True")
    ts = _step_timesteps(sigmas, timesteps)
    lam = [_log_snr(s) for s in sig]
    n = len(sig) - 1
    x, x_prev, prev_order, hist = noise, None, 0, []
    for i in range(n):
        t = ts[i].to(x.device).expand(x.shape[0])
        x_seen = x
        x0 = x - sig[i] * model_fn(x, t)
        if i > 0:
            x = _unipc_update(x_prev, sig, lam, i - 1, i, hist, prev_order, variant, x0_at_t=x0)
        hist = [(i, x0)] + hist[: order - 1]
        p = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        x_prev, prev_order = x, p
        x = _unipc_update(x, sig, lam, i, i + 1, hist, p, variant)
        if callback is not None:
            callback({"i": i, "sigma": sig[i], "t": t, "x": x_seen, "x0": x0, "x_next": x})
    return x
