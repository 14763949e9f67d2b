"""Which classes build a model folder's components: the folder's ``model_index.json``, diffusers' convention.

    {"_class_name": "WanPipeline",
     "transformer": ["diffusers", "WanTransformer3DModel"],
     "text_encoder": ["transformers", "UMT5EncoderModel"],
     "vae": ["diffusers", "AutoencoderKLWan"], ...}

Each entry ``[library, class]`` names the class that loads that component from the folder. The Wan classes of
diffusers and transformers map to this project's own (`WanDiT`, `WanTextEncoder`, `WanVAE`, which read those
layouts); a ``causvid.*`` library is a module of this package and its class is used as named (the toy world's
folders name theirs this way). A folder without ``model_index.json`` (the original Wan2.1 release) is a Wan
folder. Every class is built with ``cls.from_pretrained(folder, ...)``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

__all__ = ["MODEL_INDEX", "component_class", "write_model_index"]

MODEL_INDEX = "model_index.json"

#: The class of each component of a folder without model_index.json, as "module:Class".
WAN_DEFAULTS = {
    "transformer": "causvid.models.wan:WanDiT",
    "text_encoder": "causvid.models.text_encoder:WanTextEncoder",
    "vae": "causvid.models.vae:WanVAE",
}
#: diffusers / transformers classes this project reads with its own.
KNOWN = {
    ("diffusers", "WanTransformer3DModel"): WAN_DEFAULTS["transformer"],
    ("transformers", "UMT5EncoderModel"): WAN_DEFAULTS["text_encoder"],
    ("diffusers", "AutoencoderKLWan"): WAN_DEFAULTS["vae"],
}


def _import(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def component_class(folder, component: str) -> type:
    """The class that loads ``component`` ("transformer", "text_encoder" or "vae") of ``folder``."""
    if component not in WAN_DEFAULTS:
        raise ValueError(f"unknown component {component!r}; expected one of {sorted(WAN_DEFAULTS)}")
    index = Path(folder) / MODEL_INDEX
    if not index.is_file():
        return _import(WAN_DEFAULTS[component])
    try:
        entry = json.loads(index.read_text(encoding="utf-8")).get(component)
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{index}: not a JSON object of components ({e})") from None
    if entry is None:
        return _import(WAN_DEFAULTS[component])
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(s, str) for s in entry)):
        raise ValueError(f"{index}: {component!r} must be [library, class], got {entry!r}")
    library, name = entry
    if (library, name) in KNOWN:
        return _import(KNOWN[library, name])
    if library.split(".")[0] != "causvid":
        raise ValueError(f"{index}: {component!r} is {entry}, which this project cannot load; use one of "
                         f"{sorted(map(list, KNOWN))} or a causvid module's class")
    try:
        return _import(f"{library}:{name}")
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{index}: {component!r} names {library}.{name}, which does not exist ({e})") from None


def write_model_index(folder, class_name: str, **components: tuple) -> Path:
    """Write ``folder/model_index.json``: ``components`` maps a component to its (library, class)."""
    index = {"_class_name": class_name, **{k: list(v) for k, v in sorted(components.items())}}
    path = Path(folder) / MODEL_INDEX
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path
