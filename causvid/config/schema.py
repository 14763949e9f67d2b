"""The schema of a run config: every key, its default, and which of the original codebases reads it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from causvid.errors import UsageError
from causvid.wan_conventions import WAN_NEGATIVE_PROMPT

# The model wan_model_path holds by default, and the real score's default (real_name).
BASE_MODEL_NAME = "Wan2.1-T2V-1.3B"


class ConfigError(UsageError):
    """A config that cannot be used: unknown key, wrong type, missing file, invalid YAML or inconsistent values."""


# ----------------------------------------------------------------------------------------------------------------
# Schema
#
# Which codebase reads a key: CV = CausVid, SF = Self-Forcing, CF = Causal-Forcing (CF is a fork of SF and reads
# everything SF reads unless noted), ours = added here. "unread" marks keys the originals carry in their files
# but whose value no code reads; they are kept so that the files load unchanged.


@dataclass
class ModelKwargs:
    """Keyword arguments of the causal generator's wrapper (SF/CF `model_kwargs`)."""

    # Shift of the generator's FlowMatchScheduler (its 1000-step grid, which warp_denoising_step indexes).
    # None: the wrapper default, which is `timestep_shift` here (SF's wrapper defaults to 8, CV hard-codes 8).
    timestep_shift: Optional[float] = None
    # Attention window in latent frames for KV-cached inference; -1 = global (the whole 21-frame cache).
    local_attn_size: int = -1
    # Latent frames at the start of the cache that are never evicted when the window rolls (attention sink).
    sink_size: int = 0
    # RoPE positions of cached frames: "absolute" (their frame index, the originals) or "window" (their rank in
    # the rolling window, sink first, as Infinity-RoPE does: no position past the window in an endless stream).
    rope_positions: str = "absolute"
    # ours: the latest latent frames a prompt switch re-caches under the new prompt (the blocks holding them;
    # the older ones are forgotten, the sink included when it moves); -1: every frame in the window, as LongLive.
    # A framewise toy student takes a switch sooner with 1 (docs/toy/notes.md, "Re-caching the last frame").
    recache_frames: int = -1
    # ours: a prompt switch writes the re-cached frames noised to this timestep (add_noise, labelled so) instead of
    # clean (0, LongLive): the frames stay where they were but bind the new prompt less, so it shows sooner. The
    # framewise toy student takes 88 % of switches within one frame at 375, 50 % clean (docs/toy/notes.md).
    recache_noise: float = 0.0


@dataclass
class LoRA:
    """ours: train one model as a LoRA of its loaded weights (frozen), through peft (causvid/training/lora.py)."""

    # Rank of the adapter; 0 = no LoRA (the model is trained in full).
    rank: int = 0
    # Scale alpha / rank of the adapter's output; None = rank (scale 1).
    alpha: Optional[float] = None
    # Dropout on the adapter's input (peft's lora_dropout).
    dropout: float = 0.0
    # Linear layers that get an adapter: names matched at the end of the module path (peft's rule), e.g. "q"
    # matches every blocks.N.self_attn.q and blocks.N.cross_attn.q. Default: attention and feed-forward layers.
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "ffn.0", "ffn.2"])


@dataclass
class LoRAs:
    """ours: a LoRA block per trained model."""

    generator: LoRA = field(default_factory=LoRA)
    critic: LoRA = field(default_factory=LoRA)  # the fake score of DMD


@dataclass
class Config:
    # model ------------------------------------------------------------------------------------------------------
    # ours: the Wan2.1 folder (DiT, umT5, VAE); the originals hard-code this path.
    wan_model_path: str = f"wan_models/{BASE_MODEL_NAME}"
    # CV: architecture of the scores and, without generator_name, of the generator: "wan" (bidirectional) or
    # "causal_wan". None (SF/CF files): the generator's causality comes from `causal`.
    model_name: Optional[str] = None
    # CV: architecture of the generator when it differs from model_name (causal student, bidirectional teacher).
    generator_name: Optional[str] = None
    # SF/CF: the real score (teacher) model, a folder name under wan_models/ (SF DMD uses the 14B).
    real_name: str = BASE_MODEL_NAME
    # ours: the real score's folder; None = `real_name` next to wan_model_path (see real_score_path()).
    real_model_path: Optional[str] = None
    # CV/SF/CF: generator initialisation (ODE / AR-diffusion checkpoint, key "generator"); None = Wan weights.
    generator_ckpt: Optional[str] = None
    # SF/CF: the generator is causal (block-causal attention, KV cache).
    causal: bool = True
    # CF consistency distillation: the student is causal (set by causal_cd_*.yaml).
    is_causal: bool = True
    # CV/SF/CF: latent frames per autoregressive block: 3 = chunkwise, 1 = framewise.
    num_frame_per_block: int = 1
    # SF: the first latent frame is a block of its own (I2V layout [1, N, N, ...]).
    independent_first_frame: bool = False
    # SF/CF: image-to-video (first latent frame given).
    i2v: bool = False
    # SF/CF: extra arguments of the causal generator wrapper.
    model_kwargs: ModelKwargs = field(default_factory=ModelKwargs)
    # CV/CF: requires_grad per submodule of the generator / real score / fake score (unread in CF).
    generator_grad: dict[str, bool] = field(default_factory=lambda: {"model": True})
    real_score_grad: dict[str, bool] = field(default_factory=lambda: {"model": False})
    fake_score_grad: dict[str, bool] = field(default_factory=lambda: {"model": True})
    # CV/SF/CF: activation checkpointing in the trained DiTs.
    gradient_checkpointing: bool = True
    # CV/SF/CF: bf16 parameters under FSDP mixed precision (fp32 reduce and buffers).
    mixed_precision: bool = True
    # ours: "full" = the published model.pt gathered on rank 0 (what every CLI and the originals read); "sharded" =
    # torch.distributed.checkpoint, each rank writing its shards (models too big to gather; resumable at any
    # world size; `python -m causvid.export` makes a full file of it).
    checkpoint_format: str = "full"
    # ours: the frozen text encoder and real score live in CPU memory between uses (the real score through
    # FSDP2's CPU offload, a block's parameters copied in for its compute; the text encoder moved in to encode):
    # their GPU memory traded for host-device copies. No effect on a CPU run.
    offload_frozen: bool = False
    # ours: LoRA training per model (`lora.generator.rank: 16`); rank 0 trains the model in full.
    lora: LoRAs = field(default_factory=LoRAs)
    # ours: ranks that share each sample, each holding a piece of every frame's tokens (Ulysses sequence
    # parallelism; docs/sequence_parallel.md). Divides the number of processes and the DiTs' num_heads.
    sequence_parallel_size: int = 1

    # timesteps --------------------------------------------------------------------------------------------------
    # CV/SF/CF: the few-step generator's timesteps. CV lists end in 0 (dropped at inference); SF/CF lists do not
    # and are usually warped. None (AR-diffusion configs) = 50-step sampling. See denoising_steps().
    denoising_step_list: Optional[list[float]] = None
    # CF 1/2-step configs: block 0's own (longer) step list.
    denoising_step_list_first_chunk: Optional[list] = None
    # ours: the step lists of the first blocks, one per block position (read like denoising_step_list); later
    # blocks run denoising_step_list. [[1000, 750, 500, 250]] with denoising_step_list [1000, 500]: 4 steps for
    # block 0, 2 for the rest (more steps until the context is established). Inference and DMD training alike;
    # generalises denoising_step_list_first_chunk (give one or the other).
    denoising_step_list_per_block: Optional[list] = None
    # CV/SF/CF: read the step list as unshifted timesteps and map it through the shifted training grid.
    warp_denoising_step: bool = False
    # CV/SF/CF: size of the training timestep grid.
    num_train_timestep: int = 1000
    # CV/SF/CF: shift applied to uniformly drawn DMD / critic / diffusion training timesteps.
    timestep_shift: float = 8.0
    # SF: DMD timestep schedule that narrows over training (every shipped config sets false).
    ts_schedule: bool = False
    # SF/CF: one random exit step shared by all blocks of a rollout.
    same_step_across_blocks: bool = True
    # SF/CF: always exit at the last denoising step.
    last_step_only: bool = False
    # SF/CF: timestep at which the clean output is re-run to fill the KV cache. Their inference runs the clean
    # block labelled t = context_noise; their training noises it to context_noise first (on the grid below).
    context_noise: int = 0
    # CV/SF/CF: noising and flow -> x0 take sigma from the nearest point of the shifted 1000-step training grid,
    # as the originals' scheduler does (757 -> 756.757 at shift 8; t = 0 -> 4.98 at shift 5, so their training
    # refresh input is x0 + 0.00498 (noise - x0)). The model itself still gets the raw t. false: sigma = t / 1000.
    snap_timesteps: bool = True
    # SF/CF: shift of the real and fake scores' grid, which their flow -> x0 snaps to (their wrappers are built
    # without model_kwargs, so Wan's default 8, while the generator's grid is model_kwargs.timestep_shift); the
    # critic's flow target then scales by sigma_8 / sigma_5 as in the originals. CV: 8 everywhere.
    score_timestep_shift: float = 8.0
    # ours: steps of the many-step sampler used for models without a denoising_step_list (Wan / SF: 50).
    num_inference_steps: int = 50
    # CV (and CF's causal_ode files, unread there): how the generator's timesteps are shared across frames:
    # "causal_video" (per block) or "bidirectional_video" (per video).
    generator_task: str = "causal_video"
    # CV: the same for the DMD real / fake score timesteps.
    real_task_type: str = "bidirectional_video"
    fake_task_type: str = "bidirectional_video"

    # training algorithm -----------------------------------------------------------------------------------------
    # SF/CF: which trainer runs: "score_distillation", "ode", "diffusion", "gan" (SF),
    # "consistency_distillation" (CF). None (CV files) = from distillation_loss; see trainer_name().
    trainer: Optional[str] = None
    # SF/CF score distillation: "dmd", "sid" (SF), "causvid" (SF).
    distribution_loss: str = "dmd"
    # CV: "dmd" (train_distillation.py) or "ode" (train_ode.py).
    distillation_loss: str = "dmd"
    # CV/SF/CF: the critic's / diffusion loss parameterisation ("flow"; CV also x0, v, noise).
    denoising_loss_type: str = "flow"
    # CFG in Wan's form, uncond + g (cond - uncond): many-step sampling, ODE data, CF's CD teacher step. (SF/CF DMD
    # files write the DMD real score's scale here; load_config moves it to real_guidance_scale and sets this to
    # that scale + 1, the same guidance in Wan's form.)
    guidance_scale: float = 3.0
    # The DMD real score's scale s in CausVid's form, real = cond + s (cond - uncond) = Wan's form with g = s + 1.
    real_guidance_scale: Optional[float] = None
    # CV/SF/CF: the unconditional prompt for CFG.
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    # ours, diffusion trainer: probability of training a sample on negative_prompt instead of its caption, so
    # a model trained from scratch (the toy teacher) learns the unconditional prediction CFG needs.
    caption_dropout: float = 0.0
    # ours, diffusion trainer, bidirectional generator: probability that a clip is noised frame by frame (a level
    # per frame, or per block of num_frame_per_block: Diffusion Forcing's noise) instead of one level for the
    # clip, so that denoising a frame needs the others (toy teachers on clips cut anywhere: docs/toy/notes.md,
    # where one run gained and one did not).
    diffusion_frame_noise_prob: float = 0.0
    # ours, diffusion trainer: the loss weight over timesteps. "bump": Self-Forcing's (peaks at t = 500, zero at
    # t = 1000), right for fine-tuning a model that already denoises pure noise; "uniform": plain flow matching,
    # for a model trained from scratch (the toy teacher), which the bump leaves untrained at high noise.
    diffusion_loss_weighting: str = "bump"
    # CV: build the generator's DMD input by running it from noise (True) instead of noising data latents.
    backward_simulation: bool = True
    # ours: how DMD builds the generator's sample: "self_forcing" (its own KV-cached rollout, gradient from a
    # random exit step: SF/CF), "backward_simulation" or "data" (CV: one level per block of its own no-grad
    # run from noise, or of noised data latents). None: from the file's convention (SF/CF files name a
    # `trainer`; CV files do not and say `backward_simulation`). See dmd_input().
    dmd_input: Optional[str] = None
    # ours, Self-Forcing DMD: gradient across blocks through the KV cache. "straight_through" (SF/CF: later
    # blocks' attention sends gradient into earlier blocks' exit-step K/V, whose values the no-grad refresh
    # pass has replaced) or "detached" (cached K/V carry no gradient).
    kv_cache_gradient: str = "straight_through"
    # ours, ODE trainer: the ODE rows' layout. "causvid" (one slot per listed level + the endpoint; a level drawn
    # per block, target the last slot; also Self-Forcing's) or "causal_forcing" (noise, the 3 warped states,
    # the ODE output, the real latent; one level per video, target slot -2, the real latent as teacher-forcing
    # context). None: "causal_forcing" for files that name `trainer: ode` (CF), else "causvid". See ode_layout().
    ode_layout: Optional[str] = None
    # SF/CF diffusion trainer: teacher forcing (clean context tokens) instead of diffusion forcing.
    teacher_forcing: bool = False
    # CF consistency distillation (unread).
    spatial_sf: bool = False
    # CF consistency distillation: the teacher's Euler grid size (shift = timestep_shift).
    discrete_cd_N: int = 48
    # SF SiD: the alpha of the SiD loss.
    sid_alpha: float = 1.0
    # CV/SF/CF: critic updates per generator update.
    dfake_gen_update_ratio: int = 5

    # optimisation -----------------------------------------------------------------------------------------------
    # CV/SF/CF: AdamW of the generator (CV also uses it for the critic).
    lr: float = 2.0e-6
    beta1: float = 0.9
    beta2: float = 0.999
    # SF/CF: AdamW of the critic; None = the generator's value.
    lr_critic: Optional[float] = None
    beta1_critic: Optional[float] = None
    beta2_critic: Optional[float] = None
    # SF/CF: AdamW weight decay (CV: PyTorch's default, also 0.01).
    weight_decay: float = 0.01
    # SF GAN: discriminator lr = lr_critic * this.
    discriminator_lr_multiplier: float = 1.0
    # ours: gradient-norm clip (hard-coded 10 in CV/SF/CF).
    max_grad_norm: float = 10.0
    # CV/SF/CF: batch size per process.
    batch_size: int = 1
    # SF/CF: intended global batch, informational (SF's ODE trainer asserts it; the trainer here notes a
    # difference from batch_size x processes x grad_accum); None = not stated.
    total_batch_size: Optional[int] = None
    # ours (CF files carry it, unread): micro-batches accumulated per optimizer step.
    grad_accum: int = 1
    # SF/CF: EMA decay of the generator; 0 = no EMA (CV has none).
    ema_weight: float = 0.0
    # SF/CF: first step at which the EMA is created and updated.
    ema_start_step: int = 0
    # ours: stop after this many steps; None = run until stopped, as the originals do.
    max_iters: Optional[int] = None
    # CV/SF/CF: 0 = a random seed broadcast from rank 0; rank r uses seed + r.
    seed: int = 0

    # data -------------------------------------------------------------------------------------------------------
    # CV/SF/CF: prompt file (.txt, one per line) or LMDB of latents / ODE pairs.
    data_path: Optional[str] = None
    # SF: the LMDB holds raw video to encode rather than latents.
    load_raw_video: bool = False
    # CV/SF/CF: latent shape [B, F, C, H, W] of generated samples ([1, 21, 16, 60, 104] = 81 frames 480x832).
    image_or_video_shape: list[int] = field(default_factory=lambda: [1, 21, 16, 60, 104])
    # SF/CF: longest self-forcing rollout in latent frames (the last 21 are trained on).
    num_training_frames: int = 21
    # ours, Self-Forcing DMD (Self-Forcing++, arXiv 2510.02283, Alg. 1): the student rolls out this many latent
    # frames through a rolling KV window (model_kwargs.local_attn_size / sink_size; when unset, the training
    # length and one block of sink, as endless streams use), and the DMD loss is taken on one window of the
    # training length (image_or_video_shape[1]) of it. 0 = the training length itself (no long rollout).
    long_rollout_frames: int = 0
    # ours: which window of a long rollout gets the loss: "uniform" (a block-aligned start drawn per step, as
    # Self-Forcing++ does, so every depth of the stream is trained) or "last" (the deepest window).
    long_rollout_window: str = "uniform"

    # logging ----------------------------------------------------------------------------------------------------
    # CV/SF/CF: steps between checkpoints / logged samples.
    log_iters: int = 200
    # ours: keep only the newest n checkpoints in the run folder; None = keep all (as the originals).
    keep_last_n: Optional[int] = None
    # CV: run directory (SF/CF take --logdir instead).
    output_path: Optional[str] = None
    # SF/CF: steps between gc.collect() calls.
    gc_interval: int = 100
    # CV/SF/CF: wandb login and run naming (placeholders in the shipped files).
    wandb_host: Optional[str] = None
    wandb_key: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_project: Optional[str] = None
    wandb_name: Optional[str] = None

    # distributed ------------------------------------------------------------------------------------------------
    # CV/SF/CF: FSDP sharding: "full", "hybrid_full", "hybrid_zero2", "no_shard".
    sharding_strategy: str = "hybrid_full"
    # CV/SF/CF: FSDP auto-wrap policy per model: "size" or "transformer".
    generator_fsdp_wrap_strategy: str = "size"
    real_score_fsdp_wrap_strategy: str = "size"
    fake_score_fsdp_wrap_strategy: str = "size"
    text_encoder_fsdp_wrap_strategy: str = "size"

    # evaluation (SF default_config.yaml; unread by the training and inference code) ------------------------------
    ckpt_step: int = 0
    prompt_name: str = "MovieGenVideoBench"
    prompt_path: str = "prompts/MovieGenVideoBench.txt"
    eval_first_n: int = 64
    num_samples: int = 1
    height: int = 480
    width: int = 832
    num_frames: int = 81


#: Keys the originals' files carry that no code here reads (the "unread" ones above and the evaluation block):
#: accepted so that those files load unchanged, and ignored, with one warning per file when a value differs from
#: the neutral one (the default; for num_training_frames the training length, image_or_video_shape[1]; for
#: generator_task also what the generator's architecture implies).
IGNORED_KEYS = (
    "is_causal", "generator_grad", "real_score_grad", "fake_score_grad", "num_train_timestep", "ts_schedule",
    "generator_task", "real_task_type", "fake_task_type", "denoising_loss_type", "spatial_sf", "sid_alpha",
    "discriminator_lr_multiplier", "load_raw_video", "num_training_frames", "gc_interval",
    "sharding_strategy", "generator_fsdp_wrap_strategy", "real_score_fsdp_wrap_strategy",
    "fake_score_fsdp_wrap_strategy", "text_encoder_fsdp_wrap_strategy", "ckpt_step", "prompt_name", "prompt_path",
    "eval_first_n", "num_samples", "height", "width", "num_frames",
)
