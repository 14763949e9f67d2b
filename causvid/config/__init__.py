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
helpers of `derived.py` (`guidance_scale`, `generator_is_causal`, `trainer_name`, `denoising_steps`, ...) say
which one wins.

Files: `schema.py` (the dataclasses: every key, its default and which codebase reads it), `loading.py` (load,
check, merge, save), `derived.py` (the values several keys decide together).
"""
from causvid.config.derived import (  # noqa: F401
    denoising_steps, dmd_input, leading_block_steps, generator_grid, generator_is_causal, guidance_scale,
    ode_layout, real_score_path, score_grid, trainer_name, warp_shift,
)
from causvid.config.loading import ignored_values, load_config, save_config  # noqa: F401
from causvid.config.schema import BASE_MODEL_NAME, IGNORED_KEYS, Config, ConfigError, ModelKwargs  # noqa: F401

__all__ = [
    "Config", "ModelKwargs", "ConfigError", "load_config", "save_config", "denoising_steps", "leading_block_steps",
    "warp_shift", "generator_grid", "score_grid", "dmd_input", "ode_layout", "guidance_scale",
    "generator_is_causal", "trainer_name", "real_score_path", "BASE_MODEL_NAME", "IGNORED_KEYS",
    "ignored_values",
]

