"""The training stages: what a step feeds the models and which loss it takes. One trainer runs them all;
the config picks the stage (`trainer`, or CausVid's `distillation_loss`).

- diffusion: flow matching, bidirectional or block-causal; with `teacher_forcing` the clean latents are the
  context (Causal Forcing stage 1).
- ode: regression onto the teacher's ODE endpoint, in CausVid's layout (slots = the step list, a level drawn
  per block, target the last slot) or Causal Forcing's (6 slots, one level per video, target slot -2, the real
  latent in slot -1 as teacher-forcing context).
- dmd: distribution matching distillation with a critic (fake score) and the frozen teacher (real score);
  the generator's sample is built CausVid-style (noised data latents per block, or backward simulation) or
  Self-Forcing-style (its own KV-cached rollout, gradient from a random exit step only).
- consistency_distillation: Causal Forcing++'s causal CD: the student's x0 matches its EMA's one teacher
  Euler step further down the grid, all teacher-forced on the real latent (no ODE pairs).

Every random draw is keyed by (seed, step, global sample index, purpose): see `rng.py`.
"""
from dataclasses import dataclass

import torch

from causvid.config import (ConfigError, denoising_steps, first_block_steps, generator_is_causal,
                            guidance_scale, trainer_name, warp_shift)
from causvid.flow import add_noise, cfg as guided, euler_sigmas, flow_to_x0, training_timesteps
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid import rng
from causvid.training.losses import (blockwise, consistency_distillation_loss, critic_flow_loss, dmd_loss,
                                     euler_step, flow_matching_loss, ode_regression_loss, shifted_timesteps,
                                     training_weight)


@dataclass
class Models:
    generator: torch.nn.Module
    fake_score: torch.nn.Module = None  # the critic (DMD)
    real_score: torch.nn.Module = None  # the frozen teacher (DMD)
    teacher: torch.nn.Module = None     # the frozen AR-diffusion teacher (consistency distillation)
    target: torch.nn.Module = None      # the generator's EMA as a model (consistency distillation)


class Stage:
    data = "latents"     # what the batch holds: "latents" (clean), "ode" (trajectories) or "prompts"
    has_critic = False
    needs_negative = False
    needs_teacher = False  # Models.teacher: a frozen copy of generator_ckpt
    ema_target = False     # Models.target: the generator's EMA from step 0, refreshed before each update
    last_output = None   # the generator's latest clean sample, for visualisation

    def __init__(self, cfg):
        self.cfg = cfg
        self.seed = cfg.seed
        self.causal = generator_is_causal(cfg)
        self.block = cfg.num_frame_per_block

    # keyed randomness: one draw per global sample, the same whatever the batch or process layout
    def noise(self, like, batch, step, *tag):
        return rng.per_sample(rng.randn, like.shape[1:], batch["samples"], self.seed, step, *tag,
                              device=like.device).to(like.dtype)

    def uniform(self, shape, batch, step, *tag, device):
        return rng.per_sample(rng.rand, shape, batch["samples"], self.seed, step, *tag, device=device)

    def levels(self, count, frames, batch, step, tag, device, per_block):
        """An index in [0, count) per frame [B, F], shared within blocks (per_block) or by the whole video."""
        idx = (self.uniform((frames,), batch, step, tag, device=device) * count).long().clamp(max=count - 1)
        return blockwise(idx, self.block) if per_block else idx[:, :1].expand(-1, frames)

    def generator_kwargs(self):
        return dict(causal=self.causal, num_frame_per_block=self.block)

    def generator_loss(self, models: Models, batch: dict, step: int) -> torch.Tensor:
        raise NotImplementedError

    def critic_loss(self, models: Models, batch: dict, step: int) -> torch.Tensor:
        raise NotImplementedError


class DiffusionStage(Stage):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.teacher_forcing = bool(cfg.teacher_forcing)
        if self.teacher_forcing and not self.causal:
            raise ConfigError("teacher_forcing needs a causal generator (causal: true / generator_name: causal_wan)")
        self.grid = training_timesteps(warp_shift(cfg)).float()
        self.caption_dropout = float(cfg.caption_dropout)
        self.needs_negative = self.caption_dropout > 0
        if cfg.diffusion_loss_weighting not in ("bump", "uniform"):
            raise ConfigError(f"diffusion_loss_weighting={cfg.diffusion_loss_weighting!r}: expected 'bump' "
                              "(Self-Forcing's) or 'uniform'")
        self.bump_weight = cfg.diffusion_loss_weighting == "bump"

    def generator_loss(self, models, batch, step):
        x0 = batch["clean"]
        context = batch["context"]
        if self.caption_dropout > 0:  # train some samples unconditionally (on the negative prompt)
            drop = self.uniform((1,), batch, step, "caption_dropout", device=x0.device) < self.caption_dropout
            context = torch.where(drop[:, :, None], batch["negative"], context)
        idx = self.levels(1000, x0.shape[1], batch, step, "t", x0.device, per_block=self.causal)
        t = self.grid.to(x0.device)[idx]
        noise = self.noise(x0, batch, step, "noise")
        pred = models.generator(add_noise(x0, noise, t), t, context,
                                clean_x=x0 if self.teacher_forcing else None, **self.generator_kwargs())
        return flow_matching_loss(pred, noise, x0, training_weight(t) if self.bump_weight else None)


class ODEStage(Stage):
    data = "ode"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.denoising_step_list is None:
            raise ConfigError("the ode trainer needs denoising_step_list (the levels the ODE pairs were saved at)")
        # the list's levels, with CausVid's trailing 0 kept as a level (its clean slot, context only)
        self.times = denoising_steps(cfg) + ([0.0] if list(cfg.denoising_step_list)[-1] == 0 else [])

    def generator_loss(self, models, batch, step):
        ode = batch["ode"]  # [B, S, F, C, H, W]
        slots, frames = ode.shape[1], ode.shape[2]
        causal_forcing = slots == len(self.times) + 2  # [..., ODE output, real latent]
        if not (causal_forcing or slots in (len(self.times), len(self.times) + 1)):
            raise ValueError(f"ODE rows have {slots} slots; the step list {self.times} needs {len(self.times)} "
                             f"or {len(self.times) + 1} (CausVid / Self-Forcing) or {len(self.times) + 2} "
                             "(Causal Forcing)")
        idx = self.levels(len(self.times), frames, batch, step, "level", ode.device,
                          per_block=self.causal and not causal_forcing)
        t = torch.tensor(self.times, device=ode.device)[idx]
        x_t = torch.gather(ode, 1, idx[:, None, :, None, None, None].expand(-1, 1, -1, *ode.shape[3:]))[:, 0]
        clean = ode[:, -1] if causal_forcing else None
        pred = flow_to_x0(models.generator(x_t, t, batch["context"], clean_x=clean, **self.generator_kwargs()), x_t, t)
        self.last_output = pred.detach()
        return ode_regression_loss(pred, ode[:, -2] if causal_forcing else ode[:, -1], t)


class DMDStage(Stage):
    has_critic = True
    needs_negative = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.denoising_step_list is None:
            raise ConfigError("DMD needs denoising_step_list (the generator's few steps)")
        self.steps = denoising_steps(cfg)
        self.first_steps = first_block_steps(cfg)
        self.shift = float(cfg.timestep_shift)
        self.scale = guidance_scale(cfg)
        # Self-Forcing / Causal-Forcing files name a trainer; CausVid's do not (and build inputs from data)
        self.self_forcing = cfg.trainer is not None
        self.backward_simulation = bool(cfg.backward_simulation)
        self.data = "prompts" if (self.self_forcing or self.backward_simulation) else "latents"
        self.shape = list(cfg.image_or_video_shape)[1:]
        if self.self_forcing and not self.causal:
            raise ConfigError("Self-Forcing DMD (trainer: score_distillation) needs a causal generator")

    # -- the generator's sample -------------------------------------------------------------------------------
    def generate(self, models, batch, step):
        if self.self_forcing:
            return self._self_forcing_rollout(models, batch, step)
        return self._causvid_input(models, batch, step)

    def _self_forcing_rollout(self, models, batch, step):
        ctx = batch["context"]
        noise = self.noise(torch.empty(len(batch["samples"]), *self.shape, device=ctx.device), batch, step, "noise")
        cfg = self.cfg

        def exit_index(steps, block):
            if cfg.last_step_only:
                return len(steps) - 1
            key = ("exit",) if cfg.same_step_across_blocks else ("exit", block)
            return int(rng.randint(len(steps), (), self.seed, step, *key))  # shared by the batch (and ranks)

        def exit_step(block):
            steps = self.first_steps if (block == 0 and self.first_steps) else self.steps
            return exit_index(steps, "first" if block == 0 and self.first_steps else block)

        sampler = few_step_sampler(self.steps, self.first_steps, exit_step=exit_step,
                                   noise_fn=lambda like, tag: self.noise(like, batch, step, "renoise", *tag))
        blocks = causal_rollout(models.generator, noise, ctx, num_frame_per_block=self.block, sampler=sampler,
                                context_noise=cfg.context_noise,
                                noise_fn=lambda like, tag: self.noise(like, batch, step, "context", *tag))
        return torch.cat([x0 for _, x0 in blocks], dim=1)

    def _causvid_input(self, models, batch, step):
        """CausVid: the generator denoises, with gradient, one level per block of either the data latents
        noised to the step list's levels, or (backward simulation) its own no-grad run from noise."""
        times = self.steps + [0.0]
        ctx = batch["context"]
        if self.backward_simulation:
            x = self.noise(torch.empty(len(batch["samples"]), *self.shape, device=ctx.device), batch, step, "noise")
            states = [x]
            with torch.no_grad():
                for i, level in enumerate(self.steps):
                    t = torch.full(x.shape[:2], level, device=x.device)
                    x0 = flow_to_x0(models.generator(x, t, ctx, **self.generator_kwargs()), x, t)
                    nxt = times[i + 1]
                    x = add_noise(x0, self.noise(x0, batch, step, "sim", i), torch.full_like(t, nxt))
                    states.append(x)
            states = torch.stack(states, dim=1)
        else:
            clean = batch["clean"]
            states = torch.stack([add_noise(clean, self.noise(clean, batch, step, "level", i),
                                            torch.full(clean.shape[:2], level, device=clean.device))
                                  for i, level in enumerate(times)], dim=1)
        frames = states.shape[2]
        idx = self.levels(len(times), frames, batch, step, "index", states.device, per_block=self.causal)
        x_t = torch.gather(states, 1, idx[:, None, :, None, None, None].expand(-1, 1, -1, *states.shape[3:]))[:, 0]
        t = torch.tensor(times, device=states.device)[idx]
        flow = models.generator(x_t, t, ctx, **self.generator_kwargs())
        return flow_to_x0(flow, x_t, t)  # at t = 0 this is x_t itself: the clean context passes through

    # -- losses -----------------------------------------------------------------------------------------------
    def dmd_timesteps(self, x, batch, step, tag):
        """One t per video: uniform, shifted, clamped to [20, 980] (CausVid / Self-Forcing)."""
        u = self.uniform((1,), batch, step, tag, device=x.device)
        return shifted_timesteps(u, self.shift).clamp(20.0, 980.0).expand(-1, x.shape[1])

    def generator_loss(self, models, batch, step):
        x = self.generate(models, batch, step)
        self.last_output = x.detach()
        t = self.dmd_timesteps(x, batch, step, "dmd_t")
        with torch.no_grad():
            x_t = add_noise(x.detach(), self.noise(x, batch, step, "dmd_noise"), t)
            fake = flow_to_x0(models.fake_score(x_t, t, batch["context"]), x_t, t)
            cond = flow_to_x0(models.real_score(x_t, t, batch["context"]), x_t, t)
            uncond = flow_to_x0(models.real_score(x_t, t, batch["negative"]), x_t, t)
            real = guided(cond, uncond, 1.0 + self.scale)  # cond + s (cond - uncond)
        return dmd_loss(x, real, fake)

    def critic_loss(self, models, batch, step):
        with torch.no_grad():
            x = self.generate(models, batch, step)
        t = self.dmd_timesteps(x, batch, step, "critic_t")
        noise = self.noise(x, batch, step, "critic_noise")
        pred = models.fake_score(add_noise(x, noise, t), t, batch["context"])
        return critic_flow_loss(pred, noise, x)


STAGES = {"diffusion": DiffusionStage, "ode": ODEStage, "score_distillation": DMDStage}


def make_stage(cfg) -> Stage:
    name = trainer_name(cfg)
    if name not in STAGES:
        raise ConfigError(f"trainer {name!r} is not implemented; choose one of {sorted(STAGES)}")
    if name == "score_distillation" and cfg.distribution_loss != "dmd":
        raise ConfigError(f"distribution_loss {cfg.distribution_loss!r} is not implemented (only 'dmd')")
    return STAGES[name](cfg)


class ConsistencyDistillationStage(Stage):
    """Causal consistency distillation (Causal Forcing++ stage 2b, CF's `trainer: consistency_distillation`,
    `model/naive_consistency.py`): the few-step initialisation for DMD without ODE pairs.

    Student, frozen teacher (`Models.teacher`) and EMA target (`Models.target`) all start from the
    AR-diffusion checkpoint (`generator_ckpt`). Per sample: an index n on the grid of `discrete_cd_N` levels
    t_0 = 1000 > ... > t_{N-1} > 0 of the shift-`timestep_shift` Euler schedule, one n for the whole video
    (every block and frame at t_n, as CF draws one index per call and feeds it to all 21 frames); the real
    latent noised to t_n; one teacher Euler step with Wan-form CFG (uncond + guidance_scale (cond - uncond) on
    the flow, the negative prompt as uncond) gives x at t_{n+1}; the loss is the MSE over all frames between
    the student's x0 at (x_{t_n}, t_n) and the target's x0 at (x_{t_{n+1}}, t_{n+1}), without gradient
    (`losses.consistency_distillation_loss`). Every model call is teacher-forced with the real latent as
    clean context (`clean_x`): CF's teacher runs block by block on a KV cache filled with the real latents of
    the earlier blocks, which attends exactly as the teacher-forcing mask does for all blocks at once.

    As in CF, n is drawn from [0, N - 2], so t_{n+1} >= t_{N-1} > 0 and the boundary t_next = 0 (target =
    x_{t_next}) never arises; the loss function still handles it. The target is the EMA from step 0: CF
    makes its EMA at start-up from the loaded generator and updates it after every step (`ema_weight`);
    `ema_start_step` only chooses which weights its checkpoints hold. Here checkpoints always hold both
    `generator` and `generator_ema` (the EMA is also resume state), so `ema_start_step` is unused. CF's
    checkpoints past ema_start_step most likely hold only the EMA (its DMD trainer's do; unverified for CD),
    while a DMD run's `generator_ckpt` reads `generator`: to start DMD from the EMA, export `generator_ema`
    first (`load_dit(..., use_ema=True)`).

    Details the reference leaves open or where this differs slightly: CF's teacher step goes through its
    inference pipeline's UniPC scheduler, whose single first-order step from a fresh scheduler is exactly
    this Euler step, but on Wan's UniPC grid (top sigma 0.999, integer timesteps) while the student and the
    target use the FlowMatchScheduler grid (top sigma 1, float timesteps); the two grids differ by under one
    timestep. Here one grid serves all three models. CF's batch is one video per GPU; with more the per-video
    draw and the mean over the batch are the natural extension.
    """
    needs_negative = True
    needs_teacher = True
    ema_target = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if not self.causal:
            raise ConfigError("consistency_distillation needs a causal generator (causal: true): it is teacher-forced")
        if not 0 < cfg.ema_weight < 1:
            raise ConfigError(f"ema_weight={cfg.ema_weight}: consistency distillation needs an EMA target; "
                              "set 0 < ema_weight < 1 (Causal Forcing: 0.99)")
        if cfg.discrete_cd_N < 2:
            raise ConfigError(f"discrete_cd_N={cfg.discrete_cd_N}: need at least 2 grid levels (Causal Forcing: 48)")
        self.times = euler_sigmas(cfg.discrete_cd_N, float(cfg.timestep_shift))[:-1] * 1000.0  # N levels, > 0
        self.scale = float(cfg.guidance_scale)

    def generator_loss(self, models, batch, step):
        x0, ctx = batch["clean"], batch["context"]
        n = self.levels(len(self.times) - 1, x0.shape[1], batch, step, "cd_index", x0.device, per_block=False)
        times = self.times.to(x0.device)
        t, t_next = times[n].float(), times[n + 1].float()
        x_t = add_noise(x0, self.noise(x0, batch, step, "noise"), t)
        kw = dict(clean_x=x0, **self.generator_kwargs())
        with torch.no_grad():
            flow = guided(models.teacher(x_t, t, ctx, **kw), models.teacher(x_t, t, batch["negative"], **kw),
                          self.scale)
            x_next = euler_step(x_t, flow, t, t_next)
            target = flow_to_x0(models.target(x_next, t_next, ctx, **kw), x_next, t_next)
        pred = flow_to_x0(models.generator(x_t, t, ctx, **kw), x_t, t)
        self.last_output = pred.detach()
        return consistency_distillation_loss(pred, target, x_next, t_next)


STAGES["consistency_distillation"] = ConsistencyDistillationStage
