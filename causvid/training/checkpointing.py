"""Checkpoints: written atomically, found again on resume, loadable by every inference CLI.

A checkpoint is a folder `checkpoint_model_{step:06d}/` holding
- `model.pt`: the published layout of CausVid / Self-Forcing / Causal-Forcing, `{"generator": ...,
  "generator_ema": ..., "critic": ...}` with keys prefixed `model.` (what their loaders and ours read);
- `training_state.pt`: optimizers, step, data position, the EMA's start — what a resume needs beyond weights.
The folder is written under a temporary name and renamed when complete, so a run killed mid-save leaves the
previous checkpoint as the latest one.
"""
import re
import shutil
from pathlib import Path

import torch

PREFIX = "model."
_NAME = re.compile(r"^checkpoint_model_(\d{6,})$")


def published(state: dict) -> dict:
    return {PREFIX + k: v for k, v in state.items()}


def unpublished(state: dict) -> dict:
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}


def save_checkpoint(logdir, step: int, models: dict, training_state: dict) -> Path:
    """models: {"generator": sd, "generator_ema": sd or None, "critic": sd or None} (full state dicts)."""
    logdir = Path(logdir)
    final = logdir / f"checkpoint_model_{step:06d}"
    tmp = logdir / f".tmp_checkpoint_model_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: published(v) for k, v in models.items() if v is not None}, tmp / "model.pt")
    torch.save(training_state, tmp / "training_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def latest_checkpoint(logdir) -> Path:
    """The newest complete checkpoint folder in logdir, or None."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in logdir.iterdir() if (m := _NAME.match(p.name))
             and (p / "model.pt").exists() and (p / "training_state.pt").exists()]
    return max(found)[1] if found else None


def load_checkpoint(folder) -> tuple:
    """(models dict with unprefixed state dicts, training state)."""
    folder = Path(folder)
    for name in ("model.pt", "training_state.pt"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a training checkpoint (no {name})")
    models = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=False)
    return {k: unpublished(v) for k, v in models.items()}, state
