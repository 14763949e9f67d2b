"""Values several keys decide together: where the codebases use different keys for one thing (CausVid's
`real_guidance_scale` vs Self-Forcing's `guidance_scale`, ...), these say which one wins."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from causvid.config.schema import BASE_MODEL_NAME, ConfigError

def warp_shift(cfg) -> float:
    """The shift of the generator's scheduler grid, which warp_denoising_step indexes.

    SF/CF build the generator wrapper with `model_kwargs.timestep_shift` (5 in their files); CausVid's wrapper
    hard-codes 8, which equals `timestep_shift` in all its files. So: model_kwargs.timestep_shift if set, else
    timestep_shift.
    """
    shift = cfg.model_kwargs.timestep_shift
    return float(cfg.timestep_shift if shift is None else shift)


def _normalized(cfg, steps) -> list:
    from causvid.flow import normalize_step_list  # torch: only where the steps are used

    return normalize_step_list([float(t) for t in steps], warp=bool(cfg.warp_denoising_step), shift=warp_shift(cfg))


def _steps(cfg, key: str) -> Optional[list]:
    return None if cfg[key] is None else _normalized(cfg, cfg[key])


def denoising_steps(cfg) -> Optional[list]:
    """The timesteps the few-step generator actually runs at, or None (no list: many-step AR diffusion).

    A trailing 0 is dropped (CausVid's convention: [1000, 757, 522, 0] runs 3 steps); with warp_denoising_step
    the list is mapped through the shifted grid (Self-Forcing: [1000, 750, 500, 250] at shift 5 ->
    [1000, 937.5, 833.3, 625]; CausVid's warp_4step_cfg2 at shift 8 -> [1000, 960, 888.9, 727.3]).
    """
    return _steps(cfg, "denoising_step_list")


def leading_block_steps(cfg) -> list:
    """The timesteps of the first blocks, one list per block position, warped like the main list; blocks past
    them run `denoising_steps`. Causal Forcing's 1/2-step configs give block 0 four steps
    (denoising_step_list_first_chunk); denoising_step_list_per_block gives any number of blocks their own. []
    when every block runs the main list."""
    if cfg.denoising_step_list_per_block is not None:
        return [_normalized(cfg, steps) for steps in cfg.denoising_step_list_per_block]
    first = _steps(cfg, "denoising_step_list_first_chunk")
    return [first] if first else []


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
    """The DMD real score's scale s of cond + s (cond - uncond): real_guidance_scale (load_config sets it for the
    SF/CF DMD files, which give it as guidance_scale), else guidance_scale - 1 (guidance_scale is Wan's form)."""
    return float(cfg.guidance_scale - 1.0 if cfg.real_guidance_scale is None else cfg.real_guidance_scale)


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
