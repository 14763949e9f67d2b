"""LoRAs of the Wan DiT: the file format ComfyUI and diffusers read, extraction from a fine-tuned student by
truncated SVD, and merging LoRA files into a model's weights (once, before sampling: no per-step cost).

The file format (written here) is the Kijai / ComfyUI Wan LoRA layout, keyed by Wan's original module names under
`diffusion_model.`, which ComfyUI's loader maps onto its Wan model and diffusers' `WanPipeline.load_lora_weights`
converts to its own names:
- a Linear layer `M` (`blocks.N.self_attn.q`, `blocks.N.ffn.0`, `head.head`, ...): `diffusion_model.M.lora_down.weight`
  [r, in] and `diffusion_model.M.lora_up.weight` [out, r], delta W = up @ down (no `.alpha`: both loaders then scale
  by 1; a trained adapter's alpha / r is folded into `up`), and its bias change as `diffusion_model.M.diff_b`;
- any other tensor `P` (`blocks.N.modulation`, norm weights, the patch embedding): its whole change as
  `diffusion_model.P'.diff` (`.diff_b` for a bias), P' the module name for `.weight` / `.bias` tensors. ComfyUI
  applies them; diffusers drops them (it reads LoRA layers of Linear modules only).

Reading accepts that layout (with `lora_A` / `lora_B` or `lora_down` / `lora_up`, `.alpha`), diffusers' own
(`transformer.blocks.N.attn1.to_q.lora_A.weight`, diffusers module names), musubi-tuner's
(`lora_unet_blocks_N_self_attn_q.lora_down.weight`) and a PEFT adapter's (`base_model.model.` prefix).
"""
import re
from pathlib import Path

import torch

from causvid.errors import UsageError

from .wan.checkpoints import check_weights_file, diffusers_to_wan_key

PREFIX = "diffusion_model."


class LoRAError(UsageError):
    """A LoRA file that can't be applied to this model; the message names the file and what does not fit."""


# -- the Wan tensors a LoRA can change ---------------------------------------------------------------
def is_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    """The Wan DiT's Linear weights are exactly its 2-D `.weight` tensors (norms are 1-D, modulations 3-D, the
    patch embedding 5-D)."""
    return name.endswith(".weight") and tensor.dim() == 2


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0]


def diff_key(name: str) -> str:
    """The `.diff` / `.diff_b` key of a non-Linear tensor (ComfyUI: `.diff` patches `M.weight` or the tensor `M`
    itself, `.diff_b` patches `M.bias`)."""
    if name.endswith(".bias"):
        return PREFIX + _module(name) + ".diff_b"
    if name.endswith(".weight"):
        return PREFIX + _module(name) + ".diff"
    return PREFIX + name + ".diff"


# -- extraction ---------------------------------------------------------------------------------------
def weight_deltas(base: dict, student: dict) -> dict:
    """{name: student - base (float32)} for every tensor that changed."""
    if base.keys() != student.keys():
        raise LoRAError(f"the student and its base have different tensors: {sorted(base.keys() ^ student.keys())[:8]}")
    out = {}
    for name, value in student.items():
        if base[name].shape != value.shape:
            raise LoRAError(f"{name}: {tuple(value.shape)} in the student but {tuple(base[name].shape)} in the base; "
                            "the checkpoint was not trained from this base (another model size?)")
        delta = value.float() - base[name].float()
        if delta.any():
            out[name] = delta
    return out


def svd(delta: torch.Tensor) -> tuple:
    """(U * S, Vh) of a 2-D delta in float32: the rank-r truncation is (U S)[:, :r] @ Vh[:r] (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return u * s, vh


def factor(delta: torch.Tensor, rank, svd_cache: dict = None, name: str = None) -> tuple:
    """(up [out, r], down [r, in]) with up @ down the best rank-r approximation of delta; rank None or >= the
    matrix's own rank gives the exact delta (one factor the identity, no SVD rounding)."""
    out_dim, in_dim = delta.shape
    if rank is None or rank >= min(out_dim, in_dim):
        if in_dim <= out_dim:
            return delta.float(), torch.eye(in_dim)
        return torch.eye(out_dim), delta.float()
    if svd_cache is None or name not in svd_cache:
        us_vh = svd(delta)
        if svd_cache is not None:
            svd_cache[name] = us_vh
    else:
        us_vh = svd_cache[name]
    us, vh = us_vh
    return us[:, :rank].contiguous(), vh[:rank].contiguous()


def lora_tensors(deltas: dict, state: dict, rank=None, svd_cache: dict = None, dtype=torch.float32) -> dict:
    """The LoRA file's tensors (layout above) for weight deltas of a model with state dict `state`: each Linear
    layer that changed gets a rank-`rank` factorisation (None: full rank, exact) and its bias change, every
    other changed tensor its `.diff`."""
    out = {}
    linear = {_module(n) for n, v in state.items() if is_linear_weight(n, v)}
    for module in sorted({_module(n) for n in deltas if _module(n) in linear}):
        weight = deltas.get(module + ".weight", torch.zeros(state[module + ".weight"].shape))
        up, down = factor(weight, rank, svd_cache, module)
        out[PREFIX + module + ".lora_up.weight"] = up.to(dtype).contiguous()
        out[PREFIX + module + ".lora_down.weight"] = down.to(dtype).contiguous()
        if module + ".bias" in state:
            bias = deltas.get(module + ".bias", torch.zeros(state[module + ".bias"].shape))
            out[PREFIX + module + ".diff_b"] = bias.to(dtype).contiguous()
    for name, delta in deltas.items():
        if _module(name) not in linear:
            out[diff_key(name)] = delta.to(dtype).contiguous()
    return out


# -- files --------------------------------------------------------------------------------------------
def save_lora(path, tensors: dict, metadata: dict = None) -> Path:
    """safetensors with string metadata, written to a temporary name and renamed (nothing partial on disk)."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_lora(path) -> tuple:
    """(tensors, metadata) of a LoRA file (.safetensors, or a .pt / .bin state dict)."""
    path = Path(path)
    if not path.is_file():
        raise LoRAError(f"LoRA {path}: no such file")
    check_weights_file(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except SafetensorError as err:
            raise LoRAError(f"LoRA {path}: can't be read as safetensors ({err})") from err
    from .wan.checkpoints import torch_load
    state = torch_load(path)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise LoRAError(f"LoRA {path}: not a dict of tensors")
    return state, {}


# suffix in the file -> the role of the tensor
_ROLES = [(".lora_down.weight", "down"), (".lora_A.weight", "down"), (".lora_up.weight", "up"),
          (".lora_B.weight", "up"), (".lora_B.bias", "diff_b"), (".alpha", "alpha"), (".diff_b", "diff_b"),
          (".diff", "diff")]
_DIFFUSERS_NAMES = re.compile(r"(^|\.)(attn[12]|condition_embedder|proj_out|ffn\.net|scale_shift_table)(\.|$)")


def _split(key: str) -> tuple:
    for suffix, role in _ROLES:
        if key.endswith(suffix):
            return key[:-len(suffix)], role
    return key, None


def lora_deltas(tensors: dict, state: dict, source, scale: float = 1.0) -> dict:
    """{model tensor name: scale * its change} from a LoRA file's tensors, for a model with state dict `state`
    (Wan names). Keys that name no tensor of the model, or changes of the wrong shape, are a LoRAError."""
    underscored = {"lora_unet_" + _module(n).replace(".", "_"): _module(n) for n in state}
    parts, unknown = [], []
    for key, value in tensors.items():
        module, role = _split(key.removeprefix("base_model.model."))
        if role is None:
            unknown.append(key)
            continue
        module = underscored.get(module, module)
        for prefix in (PREFIX, "transformer.", "model."):
            module = module.removeprefix(prefix)
        parts.append((module.removesuffix(".default"), role, value))  # .default: a PEFT adapter's name
    if any(_DIFFUSERS_NAMES.search(module) for module, _, _ in parts):  # diffusers' module names: map them
        parts = [(diffusers_to_wan_key(m + ".weight")[:-len(".weight")], r, v) for m, r, v in parts]
    groups = {}
    for module, role, value in parts:
        groups.setdefault(module, {})[role] = value
    if unknown:
        raise LoRAError(f"LoRA {source}: {len(unknown)} keys are not LoRA tensors (e.g. {unknown[0]!r}); expected "
                        "lora_down / lora_up / lora_A / lora_B / alpha / diff / diff_b keys")
    deltas = {}
    for module, parts in groups.items():
        if "up" in parts or "down" in parts:
            if "up" not in parts or "down" not in parts:
                raise LoRAError(f"LoRA {source}: {module} has only one of its two LoRA matrices (up/B and down/A)")
            up, down = parts["up"].float(), parts["down"].float()
            rank = down.shape[0]
            alpha = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            target = module + ".weight"
            _check_fits(target, (up.shape[0], *down.shape[1:]), state, source)
            deltas[target] = (up.flatten(1) @ down.flatten(1)).reshape(state[target].shape) * (alpha * scale)
        if "diff_b" in parts:
            _check_fits(module + ".bias", parts["diff_b"].shape, state, source)
            deltas[module + ".bias"] = parts["diff_b"].float() * scale
        if "diff" in parts:
            target = module + ".weight" if module + ".weight" in state else module
            _check_fits(target, parts["diff"].shape, state, source)
            deltas[target] = parts["diff"].float() * scale
    if not deltas:
        raise LoRAError(f"LoRA {source}: no LoRA tensors in the file")
    return deltas


def _check_fits(name, shape, state, source):
    if name not in state:
        raise LoRAError(f"LoRA {source}: {name} is not a tensor of this model (a LoRA of another architecture? "
                        "expected a Wan2.1 T2V DiT LoRA)")
    expected = tuple(state[name].shape)
    if tuple(shape) != expected and (len(shape) != 2 or tuple(shape) != (expected[0], int(torch.tensor(expected[1:]).prod()))):
        raise LoRAError(f"LoRA {source}: {name} is {list(shape)} in the LoRA but {list(expected)} in the model: the "
                        "LoRA was made for another model size (e.g. Wan2.1 14B vs 1.3B)")


# -- applying LoRAs -----------------------------------------------------------------------------------
def parse_lora_spec(spec: str) -> tuple:
    """'PATH[:SCALE]' -> (Path, scale); a suffix after the last ':' that is not a number is part of the path."""
    path, sep, scale = spec.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass
    return Path(spec), 1.0


@torch.no_grad()
def merge_lora_tensors(model: torch.nn.Module, tensors: dict, source, scale: float = 1.0) -> int:
    """Add a LoRA's changes, times `scale`, into the model's weights (in float32, then the weights' dtype);
    every change is checked against the model before any weight is touched. Returns the tensors changed."""
    params = dict(model.named_parameters())
    deltas = lora_deltas(tensors, params, source, scale)
    for name, delta in deltas.items():
        p = params[name]
        p.copy_((p.float() + delta.to(p.device)).to(p.dtype))
    return len(deltas)


def merge_lora(model: torch.nn.Module, path, scale: float = 1.0) -> int:
    """merge_lora_tensors of a LoRA file."""
    return merge_lora_tensors(model, read_lora(path)[0], path, scale)


def training_adapter(path, use_ema: bool = False):
    """(adapter tensors in this module's reading format, the run's record of it) of a LoRA training run's
    checkpoint (a model.pt with a `lora` entry, see causvid/training/lora.py), or None for any other checkpoint."""
    path = Path(path)
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    if not path.is_file() or path.suffix not in (".pt", ".pth"):
        return None
    from .wan.checkpoints import CheckpointError, torch_load
    obj = torch_load(path, mmap=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("lora"), dict) or "generator" not in obj["lora"]:
        return None
    record, key = obj["lora"]["generator"], "generator_ema" if use_ema else "generator"
    if key not in obj:
        raise CheckpointError(f"{path}: no '{key}' entry in this LoRA run's checkpoint (keys: {sorted(obj)})")
    name = f".{record.get('adapter_name', 'default')}."
    tensors = {k.replace(name, "."): v for k, v in obj[key].items()}
    for k, v in list(tensors.items()):
        if k.endswith(".lora_A.weight"):  # peft scales by alpha / rank
            tensors[k[:-len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(record["alpha"]))
    return tensors, record


def check_lora_specs(specs, flag: str = "--lora") -> None:
    """Each 'PATH[:SCALE]' names a readable weights file: checked before any model loads."""
    for spec in specs or ():
        path, _ = parse_lora_spec(spec)
        if not path.is_file():
            raise LoRAError(f"{flag} {spec}: no such file {path} (give PATH or PATH:SCALE, e.g. lora.safetensors:0.8)")
        check_weights_file(path)


def merge_loras(model, specs) -> list:
    """Merge each 'PATH[:SCALE]' of `specs` in order; [(path, scale, tensors changed)]."""
    done = []
    for spec in specs or ():
        path, scale = parse_lora_spec(spec)
        done.append((path, scale, merge_lora(model, path, scale)))
    return done
