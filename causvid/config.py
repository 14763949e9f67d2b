"""The run configuration: one schema (dataclasses) for CausVid, Self-Forcing and Causal-Forcing configs.

The three codebases configure runs with flat YAML files. Self-Forcing and Causal-Forcing merge the run file over
their `configs/default_config.yaml` with plain OmegaConf; CausVid reads its file alone and falls back to
defaults in code. Neither checks keys, so a typo is silently ignored. Here the dataclasses below are the single
source of defaults (Self-Forcing's `default_config.yaml` values plus CausVid's keys plus a few of our own), and
every layer is checked against them:

    schema defaults  <  base (optional)  <  the YAML file  <  dotlist overrides ("lr=1e-5")

`load_config` returns a structured `omegaconf.DictConfig`: attribute access, types enforced on assignment, and
reading a key that does not exist raises. Errors are `ConfigError` (a ValueError) with a one-line message that
names the file, the key (dotted for nested keys) and, for a typo, the closest valid key.

Both codebases' files load as they are; where they use different names for one thing (CausVid's
`real_guidance_scale` vs Self-Forcing's `guidance_scale`, CausVid's `model_name`/`generator_name` vs
Self-Forcing's `causal`, CausVid's `distillation_loss` vs Self-Forcing's `trainer`) both keys exist, and the
helpers at the bottom (`guidance_scale`, `generator_is_causal`, `trainer_name`, `denoising_steps`, ...) say
which one wins.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from causvid.errors import UsageError
from causvid.flow import WAN_NEGATIVE_PROMPT, normalize_step_list

__all__ = [
    "Config", "ModelKwargs", "ConfigError", "load_config", "save_config", "denoising_steps", "first_block_steps",
    "warp_shift", "generator_grid", "score_grid", "dmd_input", "ode_layout", "guidance_scale",
    "generator_is_causal", "trainer_name", "real_score_path", "BASE_MODEL_NAME",
]


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

    # timesteps --------------------------------------------------------------------------------------------------
    # CV/SF/CF: the few-step generator's timesteps. CV lists end in 0 (dropped at inference); SF/CF lists do not
    # and are usually warped. None (AR-diffusion configs) = 50-step sampling. See denoising_steps().
    denoising_step_list: Optional[list[float]] = None
    # CF 1/2-step configs: block 0's own (longer) step list.
    denoising_step_list_first_chunk: Optional[list] = None
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
    # SF/CF: CFG scale of the real score (and of CF's CD / ODE teacher).
    guidance_scale: float = 3.0
    # CV's name for the real score's CFG scale (real = cond + scale * (cond - uncond)); wins when set.
    real_guidance_scale: Optional[float] = None
    # CV/SF/CF: the unconditional prompt for CFG.
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    # ours, diffusion trainer: probability of training a sample on negative_prompt instead of its caption, so
    # a model trained from scratch (the toy teacher) learns the unconditional prediction CFG needs.
    caption_dropout: float = 0.0
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
    # SF/CF: intended global batch, informational (SF's ODE trainer asserts it); None = not stated.
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


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving

PathLike = Union[str, Path]


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp):
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]" if args else origin.__name__
    if tp is Any:
        return "any"
    if _is_dataclass_type(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _split_key(full_key: str) -> list:
    """'a.b[2].c' -> ['a', 'b', 2, 'c']."""
    parts = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", full_key):
        parts.append(int(index) if index else name)
    return parts


def _expected_type(parts: list):
    tp = Config
    for part in parts:
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if _is_dataclass_type(tp):
            tp = _hints(tp).get(part)
        elif origin in (list, dict):
            args = typing.get_args(tp)
            tp = args[-1] if args else Any
        else:
            return None
        if tp is None:
            return None
    return tp


def _lookup(container, parts: list):
    node = container
    for part in parts:
        node = node[part]
    return node


def _check_keys(data: dict, cls, source: str, prefix: str = "") -> None:
    """Unknown keys (with the closest valid key) and non-mappings where the schema nests a dataclass."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
        tp = _strip_optional(hints[key])
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{dotted}' has value {value!r} ({type(value).__name__}), "
                                  f"expected {_type_name(tp)}")
            _check_keys(value, tp, source, prefix=f"{dotted}.")


def _load_yaml(path: PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _as_container(layer) -> dict:
    if isinstance(layer, (DictConfig, ListConfig)):
        return OmegaConf.to_container(layer, resolve=False)
    if dataclasses.is_dataclass(layer) and not isinstance(layer, type):
        return OmegaConf.to_container(OmegaConf.structured(layer), resolve=False)
    if not isinstance(layer, typing.Mapping):
        raise ConfigError(f"base: expected a path, mapping, DictConfig or Config, got {type(layer).__name__}")
    return dict(layer)


def _merge(cfg: DictConfig, data: dict, source: str) -> DictConfig:
    _check_keys(data, Config, source)
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as err:
        full_key = getattr(err, "full_key", None)
        if not full_key:
            raise ConfigError(f"{source}: {str(err).splitlines()[0]}") from err
        parts = _split_key(full_key)
        try:
            value = _lookup(data, parts)
            shown = "null" if value is None else f"{value!r} ({type(value).__name__})"
        except (KeyError, IndexError, TypeError):
            shown = "of the wrong type"
        expected = _expected_type(parts)
        what = f"expected {_type_name(expected)}" if expected is not None else str(err).splitlines()[0]
        raise ConfigError(f"{source}: key '{full_key}' has value {shown}, {what}") from err


def _parse_override(item: str) -> dict:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"override {item!r}: {str(err).splitlines()[0]}") from err


def _validate(cfg: DictConfig, source: str) -> None:
    """Consistency checks the types cannot express."""
    shape = list(cfg.image_or_video_shape)
    if len(shape) != 5 or any(s <= 0 for s in shape):
        raise ConfigError(f"{source}: image_or_video_shape must be 5 positive sizes [B, F, C, H, W], got {shape}")
    n = cfg.num_frame_per_block
    frames = shape[1] - 1 if cfg.independent_first_frame else shape[1]
    if n <= 0 or frames % n:
        raise ConfigError(f"{source}: {frames} latent frames do not split into blocks of num_frame_per_block={n}")
    if cfg.keep_last_n is not None and cfg.keep_last_n < 1:
        raise ConfigError(f"{source}: keep_last_n={cfg.keep_last_n}: keep at least 1 checkpoint, or null to keep all")
    for key in ("denoising_step_list", "denoising_step_list_first_chunk"):
        if cfg[key] is not None:
            try:
                _steps(cfg, key)
            except ValueError as err:
                raise ConfigError(f"{source}: {key}: {err}") from err


def load_config(path: Optional[PathLike] = None, overrides=(), base=None) -> DictConfig:
    """The schema defaults, merged under `base`, the YAML file at `path`, then the dotlist `overrides`.

    path: a YAML file, or None for the defaults alone. overrides: "key=value" strings (OmegaConf dotlist, values
    parsed as YAML: "lr=1e-5", "model_kwargs.sink_size=3", "denoising_step_list=[1000,500]"). base: an extra
    layer between the defaults and the file (a path, mapping, DictConfig or Config), e.g. a shared parent file.
    Returns a structured DictConfig. Raises ConfigError.
    """
    cfg = OmegaConf.structured(Config)
    if base is not None:
        if isinstance(base, (str, Path)):
            cfg = _merge(cfg, _load_yaml(base), str(base))
        else:
            cfg = _merge(cfg, _as_container(base), "base")
    source = "<defaults>"
    if path is not None:
        source = str(path)
        cfg = _merge(cfg, _load_yaml(path), source)
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        cfg = _merge(cfg, _parse_override(item), f"override {item!r}")
    _validate(cfg, source + (" with overrides" if overrides else ""))
    return cfg


def save_config(cfg, path: PathLike) -> Path:
    """Write a config (DictConfig, mapping or Config) as YAML; `load_config(path)` reads it back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(_as_container(cfg))
    path.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Derived values: where the codebases use different keys for one thing, these say which one wins.


def warp_shift(cfg) -> float:
    """The shift of the generator's scheduler grid, which warp_denoising_step indexes.

    SF/CF build the generator wrapper with `model_kwargs.timestep_shift` (5 in their files); CausVid's wrapper
    hard-codes 8, which equals `timestep_shift` in all its files. So: model_kwargs.timestep_shift if set, else
    timestep_shift.
    """
    shift = cfg.model_kwargs.timestep_shift
    return float(cfg.timestep_shift if shift is None else shift)


def _steps(cfg, key: str) -> Optional[list]:
    steps = cfg[key]
    if steps is None:
        return None
    return normalize_step_list(list(steps), warp=bool(cfg.warp_denoising_step), shift=warp_shift(cfg))


def denoising_steps(cfg) -> Optional[list]:
    """The timesteps the few-step generator actually runs at, or None (no list: many-step AR diffusion).

    A trailing 0 is dropped (CausVid's convention: [1000, 757, 522, 0] runs 3 steps); with warp_denoising_step
    the list is mapped through the shifted grid (Self-Forcing: [1000, 750, 500, 250] at shift 5 ->
    [1000, 937.5, 833.3, 625]; CausVid's warp_4step_cfg2 at shift 8 -> [1000, 960, 888.9, 727.3]).
    """
    return _steps(cfg, "denoising_step_list")


def first_block_steps(cfg) -> Optional[list]:
    """Block 0's timesteps (Causal-Forcing's 1/2-step configs give it 4 steps), warped like the main list;
    None when the config has no denoising_step_list_first_chunk (block 0 uses denoising_steps)."""
    return _steps(cfg, "denoising_step_list_first_chunk")


def generator_grid(cfg) -> Optional[float]:
    """The shift of the grid the generator's flow -> x0 and re-noising snap to (None: no snapping)."""
    return warp_shift(cfg) if cfg.snap_timesteps else None


def score_grid(cfg) -> Optional[float]:
    """The shift of the grid the real / fake scores' flow -> x0 snaps to (None: no snapping)."""
    return float(cfg.score_timestep_shift) if cfg.snap_timesteps else None


_DMD_INPUTS = ("self_forcing", "backward_simulation", "data")


def dmd_input(cfg) -> str:
    """How DMD builds the generator's sample: `dmd_input` when set, else SF/CF files (which name a trainer)
    roll out the student, CV files noise data latents or run backward simulation as `backward_simulation` says."""
    if cfg.dmd_input is not None:
        if cfg.dmd_input not in _DMD_INPUTS:
            raise ConfigError(f"dmd_input={cfg.dmd_input!r}: expected one of {list(_DMD_INPUTS)}")
        return cfg.dmd_input
    if cfg.trainer is not None:
        return "self_forcing"
    return "backward_simulation" if cfg.backward_simulation else "data"


def ode_layout(cfg) -> str:
    """The ODE rows' layout: `ode_layout` when set, else Causal Forcing's for files naming `trainer: ode`."""
    if cfg.ode_layout is not None:
        if cfg.ode_layout not in ("causvid", "causal_forcing"):
            raise ConfigError(f"ode_layout={cfg.ode_layout!r}: expected 'causvid' or 'causal_forcing'")
        return cfg.ode_layout
    return "causal_forcing" if cfg.trainer == "ode" else "causvid"


def guidance_scale(cfg) -> float:
    """The real score's CFG scale: CausVid's real_guidance_scale when set, else guidance_scale (SF/CF)."""
    return float(cfg.guidance_scale if cfg.real_guidance_scale is None else cfg.real_guidance_scale)


def generator_is_causal(cfg) -> bool:
    """CausVid names the generator's architecture (generator_name, else model_name: "causal_wan" or "wan");
    Self-Forcing / Causal-Forcing files name neither and say `causal`."""
    name = cfg.generator_name or cfg.model_name
    return bool(cfg.causal) if name is None else name == "causal_wan"


_CAUSVID_TRAINERS = {"dmd": "score_distillation", "ode": "ode"}


def trainer_name(cfg) -> str:
    """The trainer to run: `trainer` (SF/CF) when set, else from CausVid's distillation_loss (dmd -> score
    distillation, ode -> ode regression)."""
    if cfg.trainer is not None:
        return cfg.trainer
    if cfg.distillation_loss not in _CAUSVID_TRAINERS:
        raise ConfigError(f"no trainer set and distillation_loss={cfg.distillation_loss!r} is not one of "
                          f"{sorted(_CAUSVID_TRAINERS)}")
    return _CAUSVID_TRAINERS[cfg.distillation_loss]


def real_score_path(cfg) -> str:
    """The real score's Wan folder. SF/CF load wan_models/<real_name>, and wan_model_path holds the 1.3B base, so:
    real_model_path if set; else wan_model_path when real_name is Wan2.1-T2V-1.3B (the base, which is also
    CausVid's real score) or the folder's own name; else the folder `real_name` next to wan_model_path (so a
    tiny run with real_name Wan2.1-T2V-14B looks for runs/tiny/Wan2.1-T2V-14B)."""
    if cfg.real_model_path:
        return str(cfg.real_model_path)
    wan = Path(cfg.wan_model_path)
    if cfg.real_name in (BASE_MODEL_NAME, wan.name):
        return str(wan)
    return str(wan.parent / cfg.real_name)
