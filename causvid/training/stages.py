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

Every random draw is keyed by (seed, step, global sample index, purpose): see `rng.py`. The generator and
the critic update of a step read different batches and draw afresh, as the originals do.
"""
from dataclasses import dataclass

import torch

from causvid.config import (ConfigError, denoising_steps, dmd_input, generator_grid, generator_is_causal,
                            guidance_scale, leading_block_steps, ode_layout, score_grid, trainer_name, warp_shift)
from causvid.flow import (add_noise, cfg as guided, euler_sigmas, flow_to_x0, normalize_step_list, training_timesteps,
                          x0_to_flow)
from causvid.models.wan.attention import block_layout
from causvid.pipelines.rollout import Rollout, block_steps, few_step_sampler
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
        self.first_alone = bool(cfg.independent_first_frame)  # Self-Forcing's [1, N, N, ...] block layout
        self.grid = generator_grid(cfg)  # the shifted grid the generator's noising and flow -> x0 snap to

    # keyed randomness: one draw per global sample, the same whatever the batch or process layout
    def noise(self, like, batch, step, *tag):
        return rng.per_sample(rng.randn, like.shape[1:], batch["samples"], self.seed, step, *tag,
                              device=like.device).to(like.dtype)

    def uniform(self, shape, batch, step, *tag, device):
        return rng.per_sample(rng.rand, shape, batch["samples"], self.seed, step, *tag, device=device)

    def levels(self, count, frames, batch, step, tag, device, per_block):
        """An index in [0, count) per frame [B, F], shared within blocks (per_block) or by the whole video."""
        idx = (self.uniform((frames,), batch, step, tag, device=device) * count).long().clamp(max=count - 1)
        return blockwise(idx, self.block, self.first_alone) if per_block else idx[:, :1].expand(-1, frames)

    def generator_kwargs(self):
        return dict(causal=self.causal, num_frame_per_block=self.block, independent_first_frame=self.first_alone)

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
        self.shift = warp_shift(cfg)
        self.timesteps = training_timesteps(self.shift).float()
        self.caption_dropout = float(cfg.caption_dropout)
        self.frame_noise = float(cfg.diffusion_frame_noise_prob)
        if not 0.0 <= self.frame_noise <= 1.0 or (self.frame_noise and self.causal):
            raise ConfigError(f"diffusion_frame_noise_prob={self.frame_noise}: expected a probability in [0, 1], for "
                              "a bidirectional generator (causal: false; a causal one draws a level per block)")
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
        if self.frame_noise:  # these clips take a level per frame (the draws whose first one the clip shares)
            own = self.levels(1000, x0.shape[1], batch, step, "t", x0.device, per_block=True)
            pick = self.uniform((1,), batch, step, "frame_noise", device=x0.device) < self.frame_noise
            idx = torch.where(pick, own, idx)
        t = self.timesteps.to(x0.device)[idx]
        noise = self.noise(x0, batch, step, "noise")
        x_t = add_noise(x0, noise, t, self.grid)
        pred = models.generator(x_t, t, context, clean_x=x0 if self.teacher_forcing else None,
                                **self.generator_kwargs())
        self.last_output = flow_to_x0(pred.detach(), x_t, t, self.grid)
        weight = training_weight(t, self.shift) if self.bump_weight else None
        return flow_matching_loss(pred, noise, x0, weight)


class ODEStage(Stage):
    data = "ode"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.denoising_step_list is None:
            raise ConfigError("the ode trainer needs denoising_step_list (the levels the ODE pairs were saved at)")
        # the list's levels, with CausVid's trailing 0 kept as a level (its clean slot, context only)
        self.times = denoising_steps(cfg) + ([0.0] if list(cfg.denoising_step_list)[-1] == 0 else [])
        self.layout = ode_layout(cfg)

    def check_slots(self, slots: int, where: str = "the data") -> bool:
        """Whether the rows are Causal Forcing's (per `ode_layout`); ConfigError if `slots` does not fit it."""
        causal_forcing = self.layout == "causal_forcing"  # [noise, states..., ODE output, real latent]
        n = len(self.times)
        expected = [n + 2] if causal_forcing else [n, n + 1]
        if slots not in expected:
            levels = "[" + ", ".join(f"{t:g}" for t in self.times) + "]"
            raise ConfigError(f"{where}: ODE rows have {slots} slot(s); ode_layout {self.layout!r} with the step "
                              f"list {levels} needs {' or '.join(map(str, expected))}: set ode_layout (causvid: "
                              f"{n} or {n + 1} slots, causal_forcing: {n + 2}) to match the data, or point "
                              "data_path at ODE pairs (a latent LMDB has 1 slot: train on it with a diffusion config)")
        return causal_forcing

    def generator_loss(self, models, batch, step):
        ode = batch["ode"]  # [B, S, F, C, H, W]
        slots, frames = ode.shape[1], ode.shape[2]
        causal_forcing = self.check_slots(slots)
        idx = self.levels(len(self.times), frames, batch, step, "level", ode.device,
                          per_block=self.causal and not causal_forcing)
        t = torch.tensor(self.times, device=ode.device)[idx]
        x_t = torch.gather(ode, 1, idx[:, None, :, None, None, None].expand(-1, 1, -1, *ode.shape[3:]))[:, 0]
        clean = ode[:, -1] if causal_forcing else None
        flow = models.generator(x_t, t, batch["context"], clean_x=clean, **self.generator_kwargs())
        pred = flow_to_x0(flow, x_t, t, self.grid)
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
        self.leading = leading_block_steps(cfg)  # the first blocks' own step lists
        # CausVid draws the generator's input level from the list as written (a trailing 0 is a level)
        listed = [float(s) for s in cfg.denoising_step_list]
        self.times = normalize_step_list(listed, bool(cfg.warp_denoising_step), warp_shift(cfg)) + \
            ([0.0] if listed[-1] == 0 else [])
        self.shift = float(cfg.timestep_shift)
        self.scale = guidance_scale(cfg)
        self.score_grid = score_grid(cfg)
        self.input = dmd_input(cfg)
        if cfg.kv_cache_gradient not in ("straight_through", "detached"):
            raise ConfigError(f"kv_cache_gradient={cfg.kv_cache_gradient!r}: expected 'straight_through' "
                              "(Self-Forcing's) or 'detached'")
        self.data = "latents" if self.input == "data" else "prompts"
        self.shape = list(cfg.image_or_video_shape)[1:]
        if self.input == "self_forcing" and not self.causal:
            raise ConfigError("dmd_input self_forcing (trainer: score_distillation) needs a causal generator")
        self._long_rollout_settings(cfg)

    def _long_rollout_settings(self, cfg):
        frames = self.shape[0]
        self.rollout_frames = cfg.long_rollout_frames or frames
        if self.rollout_frames < frames or (self.rollout_frames > frames and self.input != "self_forcing"):
            raise ConfigError(f"long_rollout_frames={cfg.long_rollout_frames}: needs a Self-Forcing rollout and at "
                              f"least the training length ({frames} latent frames), or 0")
        if cfg.long_rollout_window not in ("uniform", "last"):
            raise ConfigError(f"long_rollout_window={cfg.long_rollout_window!r}: expected 'uniform' or 'last'")
        blocks = block_layout(self.rollout_frames, self.block, self.first_alone)  # raises on a bad length
        # windows of the training length that start on a block boundary (the first block is never split)
        self.window_starts = [s for s, _ in blocks if s + frames <= self.rollout_frames
                              and (s + frames == self.rollout_frames or s + frames in {b for b, _ in blocks})]
        self.kv_window = dict(local_attn_size=-1, sink_size=0)
        if self.rollout_frames > frames:
            local = cfg.model_kwargs.local_attn_size
            self.kv_window = dict(local_attn_size=local, sink_size=cfg.model_kwargs.sink_size) if local != -1 \
                else dict(local_attn_size=frames, sink_size=self.block)

    # -- the generator's sample -------------------------------------------------------------------------------
    def generate(self, models, batch, step, role="generator"):
        """The generator's clean sample for this batch; `role` ("generator" / "critic") keys its random draws."""
        if self.input == "self_forcing":
            return self._self_forcing_rollout(models, batch, step, role)
        return self._causvid_input(models, batch, step, role)

    def window_start(self, step, role) -> int:
        """First latent frame of the window that gets the loss (0 without a long rollout): shared by the batch."""
        if self.cfg.long_rollout_window == "last" or len(self.window_starts) == 1:
            return self.window_starts[-1]
        return self.window_starts[int(rng.randint(len(self.window_starts), (), self.seed, step, role, "window"))]

    def _self_forcing_rollout(self, models, batch, step, role):
        """The student's own KV-cached rollout, as at inference; the blocks of the loss window keep the exit
        step's gradient, the blocks before it run without a graph, and the rollout stops at the window's end
        (a causal student's later frames cannot change it), so memory does not grow with the rollout length."""
        ctx, cfg = batch["context"], self.cfg
        first, frames = self.window_start(step, role), self.shape[0]
        end = first + frames
        noise = self.noise(torch.empty(len(batch["samples"]), end, *self.shape[1:], device=ctx.device), batch,
                           step, role, "noise")
        sampler = few_step_sampler(self.steps, self.leading, grid=self.grid,
                                   exit_step=lambda block: self.exit_step(step, role, block),
                                   noise_fn=lambda like, tag: self.noise(like, batch, step, role, "renoise", *tag))
        rollout = Rollout(models.generator, ctx, batch=len(batch["samples"]), num_frame_per_block=self.block,
                          sampler=sampler, max_frames=end, context_noise=cfg.context_noise, noise_context=True,
                          grid=self.grid, cache_gradient=cfg.kv_cache_gradient,
                          independent_first_frame=self.first_alone, rope_positions=cfg.model_kwargs.rope_positions,
                          noise_fn=lambda like, tag: self.noise(like, batch, step, role, "context", *tag),
                          **self.kv_window)
        window = []
        for start, size in block_layout(end, self.block, self.first_alone):
            with torch.set_grad_enabled(torch.is_grad_enabled() and start >= first):
                x0 = rollout.step(noise[:, start:start + size])
            if start >= first:
                window.append(x0)
        return torch.cat(window, dim=1)

    def exit_step(self, step, role, block):
        """The step whose x0 leaves `block` (with gradient) in a Self-Forcing rollout: drawn per rollout
        (same_step_across_blocks) or per block, shared by the batch and every rank; a block with its own list
        (denoising_step_list_first_chunk / _per_block) draws independently of the other blocks, as the original
        does for block 0."""
        steps = block_steps(self.steps, self.leading, block)
        if self.cfg.last_step_only:
            return len(steps) - 1
        if block < len(self.leading):
            key = ("exit_first",) if block == 0 else ("exit_lead", block)
        else:
            key = ("exit",) if self.cfg.same_step_across_blocks else ("exit", block)
        return int(rng.randint(len(steps), (), self.seed, step, role, *key))

    def _causvid_input(self, models, batch, step, role):
        """CausVid: the generator denoises, with gradient, one level per block (per video when bidirectional)
        of the listed levels, taken from the data latents noised to each level (the clean latent itself at
        t = 0), or (backward simulation) from its own no-grad few-step run from noise."""
        ctx = batch["context"]
        kwargs = self.generator_kwargs()
        if self.input == "backward_simulation":
            x = self.noise(torch.empty(len(batch["samples"]), *self.shape, device=ctx.device), batch, step,
                           role, "noise")
            noisy = [level for level in self.times if level > 0]
            states = []
            sampler = few_step_sampler(noisy, grid=self.grid, trajectory=states,
                                       noise_fn=lambda like, tag: self.noise(like, batch, step, role, "sim", *tag))
            with torch.no_grad():
                x0 = sampler(lambda x_, t_: models.generator(x_, t_, ctx, **kwargs), x, 0)
            if len(noisy) < len(self.times):
                states.append(x0)  # a trailing 0: the clean end of the run is a level too
        else:
            clean = batch["clean"]
            states = [add_noise(clean, self.noise(clean, batch, step, role, "level", i),
                                torch.full(clean.shape[:2], level, device=clean.device), self.grid)
                      if level > 0 else clean for i, level in enumerate(self.times)]
        states = torch.stack(states, dim=1)
        frames = states.shape[2]
        idx = self.levels(len(self.times), frames, batch, step, (role, "index"), states.device,
                          per_block=self.causal)
        x_t = torch.gather(states, 1, idx[:, None, :, None, None, None].expand(-1, 1, -1, *states.shape[3:]))[:, 0]
        t = torch.tensor(self.times, device=states.device)[idx]
        # at t = 0 the frame is clean context: x0 = x - sigma(t) * flow, with the grid's smallest sigma (CausVid)
        return flow_to_x0(models.generator(x_t, t, ctx, **kwargs), x_t, t, self.grid)

    # -- losses -----------------------------------------------------------------------------------------------
    def dmd_timesteps(self, x, batch, step, tag):
        """One t per video, as the originals draw it: an integer in [0, 1000), shifted, clamped to [20, 980]."""
        u = (self.uniform((1,), batch, step, tag, device=x.device) * 1000).floor() / 1000
        return shifted_timesteps(u, self.shift).clamp(20.0, 980.0).expand(-1, x.shape[1])

    def generator_loss(self, models, batch, step):
        x = self.generate(models, batch, step)
        self.last_output = x.detach()
        t = self.dmd_timesteps(x, batch, step, "dmd_t")
        with torch.no_grad():
            x_t = add_noise(x.detach(), self.noise(x, batch, step, "dmd_noise"), t, self.grid)
            fake = flow_to_x0(models.fake_score(x_t, t, batch["context"]), x_t, t, self.score_grid)
            cond = flow_to_x0(models.real_score(x_t, t, batch["context"]), x_t, t, self.score_grid)
            uncond = flow_to_x0(models.real_score(x_t, t, batch["negative"]), x_t, t, self.score_grid)
            real = guided(cond, uncond, 1.0 + self.scale)  # cond + s (cond - uncond)
        return dmd_loss(x, real, fake)

    def critic_loss(self, models, batch, step):
        """Flow matching of the fake score on a fresh sample. Its x0 is read on the scores' grid and turned back
        into flow on the generator's, as the originals do: the target scales by sigma_score / sigma_gen."""
        with torch.no_grad():
            x = self.generate(models, batch, step, role="critic")
        t = self.dmd_timesteps(x, batch, step, "critic_t")
        noise = self.noise(x, batch, step, "critic_noise")
        x_t = add_noise(x, noise, t, self.grid)
        pred_x0 = flow_to_x0(models.fake_score(x_t, t, batch["context"]), x_t, t, self.score_grid)
        return critic_flow_loss(x0_to_flow(pred_x0, x_t, t, grid=self.grid), noise, x)


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
