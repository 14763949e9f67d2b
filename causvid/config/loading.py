"""Loading a run config: YAML layers checked key by key against the schema and merged, overrides, checks of
values that types cannot express, the warning for ignored keys, and saving."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from causvid.config.derived import generator_is_causal
from causvid.wan_conventions import check_step_list
from causvid.config.schema import IGNORED_KEYS, Config, ConfigError

PathLike = Union[str, Path]


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """The schema class's field types (cached: typing.get_type_hints evaluates every annotation again)."""
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


def _merge(layers: list) -> DictConfig:
    """The schema defaults with the layers [(data, source), ...] merged over them in order. One merge for all (each
    OmegaConf merge copies the whole config: one per layer made load_config 3x slower); when it fails, the layers
    again one by one, to name the one at fault."""
    for data, source in layers:
        _check_keys(data, Config, source)
    try:
        return OmegaConf.merge(_schema_defaults(), *(data for data, _ in layers))
    except OmegaConfBaseException as err:
        cfg = _schema_defaults()
        for data, source in layers:
            cfg = _merge_one(cfg, data, source)  # raises the ConfigError naming the layer at fault
        sources = ", ".join(source for _, source in layers)  # (no single layer fails: not seen)
        raise ConfigError(f"{sources}: {str(err).splitlines()[0]}") from err


def _merge_one(cfg: DictConfig, data: dict, source: str) -> DictConfig:
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
    if cfg.model_kwargs.rope_positions not in ("absolute", "window"):
        raise ConfigError(f"{source}: model_kwargs.rope_positions={cfg.model_kwargs.rope_positions!r}: expected "
                          "'absolute' or 'window'")
    if cfg.model_kwargs.recache_frames != -1 and cfg.model_kwargs.recache_frames < 1:
        raise ConfigError(f"{source}: model_kwargs.recache_frames={cfg.model_kwargs.recache_frames}: give the number "
                          "of latest latent frames a prompt switch re-caches (>= 1), or -1 for the whole window")
    if not 0 <= cfg.model_kwargs.recache_noise <= 1000:
        raise ConfigError(f"{source}: model_kwargs.recache_noise={cfg.model_kwargs.recache_noise}: give the timestep "
                          "in [0, 1000] the re-cached frames are noised to on a prompt switch (0: clean)")
    if cfg.checkpoint_format not in ("full", "sharded"):
        raise ConfigError(f"{source}: checkpoint_format={cfg.checkpoint_format!r}: expected 'full' (model.pt, the "
                          "published layout) or 'sharded' (torch.distributed.checkpoint)")
    for model in ("generator", "critic"):
        lora = cfg.lora[model]
        if lora.rank < 0 or not 0 <= lora.dropout < 1 or (lora.rank and not lora.target_modules):
            raise ConfigError(f"{source}: lora.{model}: rank={lora.rank}, dropout={lora.dropout}, target_modules="
                              f"{list(lora.target_modules)}: expected rank >= 0 (0 = no LoRA), 0 <= dropout < 1 and "
                              "at least one target module")
    if cfg.keep_last_n is not None and cfg.keep_last_n < 1:
        raise ConfigError(f"{source}: keep_last_n={cfg.keep_last_n}: keep at least 1 checkpoint, or null to keep all")
    lists = [(key, cfg[key]) for key in ("denoising_step_list", "denoising_step_list_first_chunk")]
    per_block = cfg.denoising_step_list_per_block
    if per_block is not None:
        if cfg.denoising_step_list_first_chunk is not None or cfg.denoising_step_list is None or not len(per_block) \
                or not all(isinstance(steps, (list, ListConfig)) for steps in per_block):
            raise ConfigError(f"{source}: denoising_step_list_per_block={per_block}: expected a list of step lists "
                              "(one per leading block) beside denoising_step_list (the later blocks'), and no "
                              "denoising_step_list_first_chunk")
        lists += [(f"denoising_step_list_per_block[{i}]", steps) for i, steps in enumerate(per_block)]
    for key, steps in lists:
        if steps is not None:
            try:
                check_step_list(list(steps), warp=bool(cfg.warp_denoising_step))
            except ValueError as err:
                raise ConfigError(f"{source}: {key}: {err}") from err


def load_config(path: Optional[PathLike] = None, overrides=(), base=None) -> DictConfig:
    """The schema defaults, merged under `base`, the YAML file at `path`, then the dotlist `overrides`.

    path: a YAML file, or None for the defaults alone. overrides: "key=value" strings (OmegaConf dotlist, values
    parsed as YAML: "lr=1e-5", "model_kwargs.sink_size=3", "denoising_step_list=[1000,500]"). base: an extra
    layer between the defaults and the file (a path, mapping, DictConfig or Config), e.g. a shared parent file.
    Returns a structured DictConfig. Raises ConfigError.
    """
    layers = []
    if base is not None:
        layers.append((_load_yaml(base), str(base)) if isinstance(base, (str, Path)) else
                      (_as_container(base), "base"))
    source = "<defaults>"
    if path is not None:
        source = str(path)
        layers.append((_load_yaml(path), source))
    if isinstance(overrides, str):
        overrides = [overrides]
    layers += [(_parse_override(item), f"override {item!r}") for item in overrides]
    cfg = _merge(layers)
    _one_guidance_form(cfg)
    _validate(cfg, source + (" with overrides" if overrides else ""))
    _warn_ignored(cfg, source)
    return cfg


def _one_guidance_form(cfg: DictConfig) -> None:
    """`guidance_scale` has one meaning, Wan's CFG form uncond + g (cond - uncond) (sampling, ODE data, CD's
    teacher step); the DMD real score's scale s of cond + s (cond - uncond) is `real_guidance_scale` (CausVid's
    key). Self-Forcing's and Causal Forcing's DMD files give s as guidance_scale: a score-distillation config with
    no real_guidance_scale has its guidance_scale read as real_guidance_scale, and guidance_scale becomes the
    same guidance in Wan's form, s + 1. So those files load and train as before, and a saved config says both.
    (CausVid's files name no trainer and give real_guidance_scale.)"""
    if cfg.real_guidance_scale is None and cfg.trainer == "score_distillation":  # (CausVid's files name none)
        cfg.real_guidance_scale = float(cfg.guidance_scale)
        cfg.guidance_scale = float(cfg.guidance_scale) + 1.0


_warned = set()


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> DictConfig:
    """The schema's defaults, built once (never changed: load_config merges onto a copy; building them each time
    was a third of a load_config call)."""
    return OmegaConf.structured(Config)


def ignored_values(cfg) -> list:
    """'key=value' for each of IGNORED_KEYS whose value differs from its neutral one."""
    defaults = _schema_defaults()
    special = {"num_training_frames": [cfg.image_or_video_shape[1]],
               "generator_task": [defaults.generator_task, "causal_video" if generator_is_causal(cfg) else
                                  "bidirectional_video"]}
    out = []
    for key in IGNORED_KEYS:
        neutral = special.get(key, [defaults[key]])
        if cfg[key] not in neutral:
            value = OmegaConf.to_container(cfg[key]) if isinstance(cfg[key], (DictConfig, ListConfig)) else cfg[key]
            out.append(f"{key}={value!r}")
    return out


def _warn_ignored(cfg, source: str) -> None:
    """One stderr line per file (and process) naming the ignored keys it sets to a non-neutral value."""
    ignored = ignored_values(cfg)
    if ignored and (source, tuple(ignored)) not in _warned:
        _warned.add((source, tuple(ignored)))
        print(f"warning: {source}: accepted for compatibility with the original codebases and ignored here: "
              f"{', '.join(ignored)}", file=sys.stderr)


def save_config(cfg, path: PathLike) -> Path:
    """Write a config (DictConfig, mapping or Config) as YAML; `load_config(path)` reads it back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(_as_container(cfg))
    path.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return path


