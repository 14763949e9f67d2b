"""Training losses as small functions of tensors (no models, no optimizers): the trainer's stages call the
models and hand the results here.

Conventions as in `causvid.flow`: x_t = (1 - s) x0 + s noise with s = t / 1000, the DiT predicts the flow
noise - x0. Latents are [B, F, C, H, W]; per-frame quantities are [B, F].
"""
import torch

from causvid.flow import shift_sigma, training_timesteps
from causvid.models.wan.attention import block_layout


def shifted_timesteps(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Map uniform draws u in [0, 1) to timesteps in [0, 1000) on the shifted schedule."""
    return shift_sigma(u, shift) * 1000.0


def blockwise(values: torch.Tensor, num_frame_per_block: int, independent_first_frame: bool = False) -> torch.Tensor:
    """Make per-frame values [B, F] equal within each block by repeating each block's first value (blocks as
    `block_layout` makes them)."""
    blocks = block_layout(values.shape[1], num_frame_per_block, independent_first_frame)
    return torch.cat([values[:, start:start + 1].expand(-1, size) for start, size in blocks], dim=1)


def training_weight(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Self-Forcing's diffusion-loss weight: a bump centred at t = 500, exp(-2 ((t - 500) / 1000)^2), minus its
    minimum and scaled to average 1, both over the points of the shifted 1000-step training grid (whose
    timesteps crowd towards 1000 at shift 5), read at the grid point nearest to t, as the originals'
    scheduler (`training_weight`) does. In float32 like theirs."""
    grid = training_timesteps(shift).float()
    bump = torch.exp(-2 * ((grid - 500.0) / 1000.0) ** 2)
    table = (bump - bump.min()) * (1000.0 / (bump - bump.min()).sum())
    index = (grid.to(t.device)[None, :] - t.reshape(-1, 1).float()).abs().argmin(dim=1)
    return table.to(t.device)[index].reshape(t.shape).to(t.dtype)


def flow_matching_loss(pred_flow: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor,
                       weight: torch.Tensor = None) -> torch.Tensor:
    """Mean squared error to the flow target noise - x0; `weight` [B, F] weighs frames (mean over the rest)."""
    err = (pred_flow.float() - (noise - x0).float()).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    return (err * weight).mean() if weight is not None else err.mean()


def ode_regression_loss(pred_x0: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE to the ODE endpoint over frames whose input timestep is not 0: CausVid's frames at t = 0 are clean
    context, not a prediction to learn."""
    err = (pred_x0.float() - target.float()).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    keep = (t != 0).float()
    return (err * keep).sum() / keep.sum().clamp(min=1)


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """Distribution-matching gradient (DMD, Yin et al. 2024, eq. 7 with the normalisation of eq. 8): the
    fake - real score difference in x0 space, divided per sample by mean |x - real_x0| so its scale does not
    depend on how far the sample is from the data; NaN (a zero normaliser) becomes 0."""
    norm = (x.double() - real_x0.double()).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    grad = (fake_x0.double() - real_x0.double()) / norm
    return torch.nan_to_num(grad)


def dmd_loss(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """0.5 * ||x - stopgrad(x - grad)||^2 (mean): its gradient in x is the DMD gradient (up to the mean)."""
    grad = dmd_gradient(x.detach(), real_x0, fake_x0)
    return 0.5 * torch.nn.functional.mse_loss(x.double(), (x.double() - grad).detach())


def critic_flow_loss(pred_flow: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The fake score's denoising loss on generator samples x0 (flow parameterisation): mean of
    (pred_flow - (noise - x0))^2 over every element (DMD2, Yin et al. 2024, eq. 5, in flow form)."""
    return flow_matching_loss(pred_flow, noise, x0)


def euler_step(x_t: torch.Tensor, flow: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE from timestep t to t_next ([B, F] each): x + (sigma_next - sigma) * flow,
    the one-step solver of consistency distillation (Song et al. 2023, "Consistency Models", Eq. 6).
    Computed in float64, returned in x_t's dtype."""
    step = ((t_next.double() - t.double()) / 1000.0)[..., None, None, None]
    return (x_t.double() + step * flow.double()).to(x_t.dtype)


def consistency_distillation_loss(student_x0: torch.Tensor, target_x0: torch.Tensor, x_next: torch.Tensor,
                                  t_next: torch.Tensor) -> torch.Tensor:
    """Consistency distillation (Song et al. 2023, "Consistency Models", Eq. 7 with d = squared L2, lambda = 1):
    mean || f_theta(x_t, t) - stopgrad f_ema(x_next, t_next) ||^2, where x_next is one teacher ODE step from x_t
    (`euler_step`) and f is a model's x0 prediction. Frames with t_next = 0 take x_next itself as the target:
    the boundary condition f(x, 0) = x (Eq. 5; an x0 = x_t - sigma * flow head meets it exactly)."""
    at_boundary = (t_next == 0)[..., None, None, None]
    target = torch.where(at_boundary, x_next, target_x0).detach()
    return (student_x0.float() - target.float()).pow(2).mean()
