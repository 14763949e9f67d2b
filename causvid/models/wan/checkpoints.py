"""One loader for every Wan DiT checkpoint users have on disk.

Sources, all reduced to a state dict in Wan's original key names:
- an original Wan folder: `config.json` + `diffusion_pytorch_model.safetensors` (or sharded, with
  `diffusion_pytorch_model.safetensors.index.json`);
- a diffusers folder (`transformer/` inside it, or the folder itself), diffusers key names;
- a published training checkpoint of CausVid / Self-Forcing / Causal-Forcing: a `.pt` dict holding `generator`
  and/or `generator_ema`, keys prefixed `model.` or `model._fsdp_wrapped_module.`;
- a single `.safetensors` / `.pt` / `.pth` state dict.

Sizes: what tensor shapes tell (dim, layers, ffn, text_dim, ...) is read from them; what they cannot tell
(num_heads, text_len) comes from `preset=`, keyword overrides or the folder's config.json (Wan or diffusers
names). Real and tiny checkpoints take exactly the same path.
"""
import json
import pickle
import re
import warnings
from pathlib import Path

import torch

from causvid.models.weights_file import TORCH_SUFFIXES, CheckpointError, check_weights_file  # noqa: F401

from .presets import PRESETS, WanConfig, get_preset


# diffusers -> Wan key renames (regex, replacement), applied in order. Verified numerically against the original
# model (random weights, fp32); the inverse of diffusers' own convert_wan_to_diffusers table.
DIFFUSERS_TO_WAN = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' norm2 is the affine cross-attention norm
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn1\.(?:to_)?", ".self_attn."),
    (r"\.attn2\.(?:to_)?", ".cross_attn."),
]

# Wrapper prefixes that training frameworks add around parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_LEADING_PREFIXES = ("model.", "module.")

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")


def diffusers_to_wan_key(key: str) -> str:
    for pattern, repl in DIFFUSERS_TO_WAN:
        key = re.sub(pattern, repl, key)
    return key


def normalize_keys(state_dict: dict) -> dict:
    """Strip training-wrapper prefixes and map diffusers names to Wan names."""
    out = {}
    for key, value in state_dict.items():
        for seg in _WRAPPER_SEGMENTS:
            key = key.replace(seg, "")
        for prefix in _LEADING_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    if any(k.startswith(("condition_embedder.", "proj_out.")) for k in out):
        out = {diffusers_to_wan_key(k): v for k, v in out.items()}
    return out


# -- reading files ------------------------------------------------------------------------------------
def torch_load(path, weights_only: bool = True, mmap: bool = False):
    """torch.load on CPU; a file it can't read (cut short, not torch.save's) is a CheckpointError naming it."""
    check_weights_file(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path}: can't be read as a PyTorch checkpoint ({text[:160]}); a truncated "
                              "download or copy? get the file again") from err


class LazyTensor:
    """A tensor of a safetensors file, not read yet: its shape, and any rows of it read on demand
    (`t[start:end]`), so a rank of a sharded model reads only its own rows."""

    def __init__(self, handle, name: str):
        self._slice = handle.get_slice(name)
        self.shape = torch.Size(self._slice.get_shape())

    def __getitem__(self, index) -> torch.Tensor:
        return self._slice[index]


def _load_safetensors(path: Path, lazy: bool = False) -> dict:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    check_weights_file(path)
    try:
        if lazy:
            handle = safe_open(str(path), framework="pt")
            return {name: LazyTensor(handle, name) for name in handle.keys()}
        return load_file(str(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path}: can't be read as safetensors ({err}); download or save it again") from err


def _load_sharded(index_path: Path, lazy: bool = False) -> dict:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({err})") from err
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointError(f"{index_path}: shard {shard} is listed but missing from {index_path.parent}")
        state.update(_load_safetensors(shard_path, lazy))
    return state


def _load_torch(path: Path, use_ema: bool) -> dict:
    obj = torch_load(path, mmap=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    wanted = "generator_ema" if use_ema else "generator"
    if wanted in obj:
        return obj[wanted]
    if any(k in obj for k in ("generator", "generator_ema", "critic")):
        hint = "; drop use_ema" if use_ema else "; pass use_ema=True (--use_ema) for the EMA weights"
        raise CheckpointError(f"{path}: no '{wanted}' entry (top-level keys: {sorted(obj)}){hint}")
    if use_ema:
        raise CheckpointError(f"{path}: use_ema requested but the file is a plain state dict with no 'generator_ema'")
    if not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: neither a training checkpoint ('generator'/'generator_ema') nor a state "
                              f"dict; top-level keys: {sorted(obj)[:20]}")
    return obj


SHARDED = "sharded"  # a training checkpoint's torch.distributed.checkpoint folder (causvid.training.checkpointing)


def is_sharded_checkpoint(folder) -> bool:
    return (Path(folder) / SHARDED / ".metadata").exists()


def _load_dcp(folder: Path, use_ema: bool) -> dict:
    """The generator (or its EMA) of a sharded training checkpoint, assembled whole in this process."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    wanted = "generator_ema" if use_ema else "generator"
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", "torch.distributed is unavailable or uninitialized")
            return _load_state_dict_from_keys({wanted}, checkpoint_id=str(folder))[wanted]
    except (KeyError, RuntimeError) as err:
        hint = " (the run's EMA had not started: drop use_ema)" if use_ema else ""
        raise CheckpointError(f"{folder}: no {wanted!r} in this sharded checkpoint{hint}") from err


def dit_folder(path) -> Path:
    """The folder holding the DiT: `transformer/` of a diffusers folder, else the folder itself."""
    path = Path(path)
    return path / "transformer" if (path / "transformer").is_dir() else path


def read_folder_config(path) -> dict:
    """The DiT's config.json of a Wan or diffusers folder, or None when it has none."""
    file = dit_folder(path) / "config.json"
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise CheckpointError(f"{file}: invalid JSON ({err})") from err


def read_checkpoint(path, use_ema: bool = False, lazy: bool = False) -> tuple:
    """(state dict in Wan names, config.json dict or None, the file the weights came from). lazy: safetensors
    entries are `LazyTensor`s and .pt files are memory-mapped, so nothing is read until it is indexed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config = None
    if is_sharded_checkpoint(path):  # a training checkpoint in torch.distributed.checkpoint's layout
        return normalize_keys(_load_dcp(path / SHARDED, use_ema)), None, path
    if path.is_dir():
        path, config = dit_folder(path), read_folder_config(path)
        weights = next((path / name for name in WEIGHT_FILES if (path / name).exists()), None)
        if weights is None:
            found = sorted(p.name for p in path.iterdir())[:20]
            raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this folder (found: {found})")
    else:
        weights = path
    if weights.name.endswith(".index.json"):
        state = _load_sharded(weights, lazy)
    elif weights.suffix == ".safetensors":
        state = _load_safetensors(weights, lazy)
    elif weights.suffix in TORCH_SUFFIXES:
        state = _load_torch(weights, use_ema)
    else:
        raise CheckpointError(f"{weights}: unknown checkpoint format (expected .safetensors, .pt or an index .json)")
    if use_ema and weights.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{weights}: use_ema applies to training checkpoints (.pt with 'generator_ema')")
    return normalize_keys(state), config, weights


# -- sizes --------------------------------------------------------------------------------------------
_DIFFUSERS_CONFIG_NAMES = {"num_layers": "num_layers", "ffn_dim": "ffn_dim", "freq_dim": "freq_dim",
                           "text_dim": "text_dim", "in_channels": "in_dim", "out_channels": "out_dim",
                           "patch_size": "patch_size", "eps": "eps", "num_attention_heads": "num_heads"}
_WAN_FIELDS = {f for f in WanConfig.__dataclass_fields__}


def config_from_json(config: dict, source) -> dict:
    """Size fields from a Wan or diffusers config.json, in WanConfig names."""
    if config is None:
        return {}
    if "num_attention_heads" in config:  # diffusers
        if config.get("added_kv_proj_dim") or config.get("image_dim"):
            raise CheckpointError(f"{source}: an image-conditioned (I2V) transformer; only T2V Wan is supported")
        out = {ours: config[theirs] for theirs, ours in _DIFFUSERS_CONFIG_NAMES.items() if theirs in config}
        if "attention_head_dim" in config:
            out["dim"] = config["num_attention_heads"] * config["attention_head_dim"]
        return out
    if config.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"{source}: model_type {config['model_type']!r}; only T2V Wan is supported")
    return {k: v for k, v in config.items() if k in _WAN_FIELDS}


def config_from_shapes(state: dict, source) -> dict:
    """Every size the tensors determine."""
    try:
        patch = state["patch_embedding.weight"]
        layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
        return {
            "dim": patch.shape[0], "in_dim": patch.shape[1], "patch_size": tuple(patch.shape[2:]),
            "num_layers": max(layers) + 1 if layers else 0,
            "ffn_dim": state["blocks.0.ffn.0.weight"].shape[0],
            "text_dim": state["text_embedding.0.weight"].shape[1],
            "freq_dim": state["time_embedding.0.weight"].shape[1],
            "out_dim": state["head.head.weight"].shape[0] // (patch.shape[2] * patch.shape[3] * patch.shape[4]),
        }
    except KeyError as err:
        raise CheckpointError(f"{source}: not a Wan DiT state dict (no {err.args[0]!r}; "
                              f"first keys: {sorted(state)[:8]})") from err


def resolve_config(state: dict, json_config: dict, preset: str, overrides: dict, source) -> WanConfig:
    claims = {}
    if preset is not None:
        claims.update(get_preset(preset).to_dict())
    claims.update(config_from_json(json_config, source))
    claims.update(overrides)
    shapes = config_from_shapes(state, source)
    for key, value in shapes.items():
        if key in claims and tuple(_as_tuple(claims[key])) != tuple(_as_tuple(value)):
            origin = "override" if key in overrides else ("config.json" if key in config_from_json(json_config, source) else f"preset {preset!r}")
            raise CheckpointError(f"{source}: {key}={claims[key]} ({origin}) but the checkpoint's tensors have {key}={value}")
    merged = {**claims, **shapes}
    if "num_heads" not in merged:
        # Shapes cannot tell the head count; the released Wan sizes are recognised by (dim, layers).
        match = [p for name, p in PRESETS.items()
                 if name.startswith("wan") and (p.dim, p.num_layers) == (merged["dim"], merged["num_layers"])]
        if not match:
            raise CheckpointError(f"{source}: cannot infer num_heads for dim={merged['dim']}, "
                                  f"num_layers={merged['num_layers']}; pass preset= or num_heads=")
        merged["num_heads"] = match[0].num_heads
    return WanConfig(**{k: v for k, v in merged.items() if k in _WAN_FIELDS})


def _as_tuple(v):
    return v if isinstance(v, (list, tuple)) else (v,)


# -- the entry point ----------------------------------------------------------------------------------
def _short(keys, n=20):
    keys = sorted(keys)
    return str(keys[:n]) + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


def open_wan_dit(cls, path, preset=None, use_ema=False, dtype=None, **overrides) -> tuple:
    """(the model on the meta device, its checkpoint's tensors unread): checked against each other, nothing
    loaded. `fill` (or a sharded model's per-rank fill) then reads what each parameter needs."""
    state, json_config, source = read_checkpoint(path, use_ema=use_ema, lazy=True)
    config = resolve_config(state, json_config, preset, overrides, source)
    with torch.device("meta"):
        model = cls(config).to(dtype or torch.float32)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{source}: state dict does not match WanDiT(dim={config.dim}, "
                              f"num_layers={config.num_layers}): missing keys {_short(missing)}; "
                              f"unexpected keys {_short(unexpected)}")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: tensor shapes differ from WanDiT({config}): {bad[:10]}")
    return model, state


@torch.no_grad()
def fill(model: torch.nn.Module, state: dict, rows=None) -> torch.nn.Module:
    """Copy each parameter's values from `state` (lazy tensors) into the model's storage, one tensor at a time.
    rows(name, param) -> (the tensor to fill, first row, end row): where a sharded parameter's local rows lie;
    default every row of a plain parameter."""
    for name, param in model.named_parameters():
        target, start, end = rows(name, param) if rows else (param, 0, param.shape[0] if param.dim() else None)
        source = state[name][start:end] if param.dim() else state[name][()]
        target.copy_(source.to(target.dtype))
    return model


def load_wan_dit(cls, path, preset=None, use_ema=False, dtype=None, device=None, **overrides):
    model, state = open_wan_dit(cls, path, preset, use_ema, dtype, **overrides)
    return fill(model.to_empty(device=device or "cpu"), state)
