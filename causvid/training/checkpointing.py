"""Checkpoints: written atomically, found again on resume, loadable by every inference CLI.

A checkpoint is a folder `checkpoint_model_{step:06d}/` holding
- `model.pt`: the published layout of CausVid / Self-Forcing / Causal-Forcing, `{"generator": ...,
  "generator_ema": ..., "critic": ...}` with keys prefixed `model.` (what their loaders and ours read);
- `training_state.pt`: optimizers, step, data position, the EMA's start — what a resume needs beyond weights.
The folder is written under a temporary name and renamed when complete, so a run killed mid-save leaves the
previous checkpoint as the latest one. `keep_last_n` (config) deletes older ones; on resume the run's log.txt is
cut back to the checkpoint's step.
"""
import re
import shutil
from pathlib import Path

import torch

from causvid.models.wan.checkpoints import torch_load
from causvid.runtime import write_text_atomic

PREFIX = "model."
_NAME = re.compile(r"^checkpoint_model_(\d{6,})$")


def published(state: dict) -> dict:
    return {PREFIX + k: v for k, v in state.items()}


def unpublished(state: dict) -> dict:
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}


def save_checkpoint(logdir, step: int, models: dict, training_state: dict, extra: dict = None) -> Path:
    """models: {"generator": sd, "generator_ema": sd or None, "critic": sd or None} (full state dicts, or a LoRA
    model's adapter); extra: entries stored beside them in model.pt as they are (a LoRA run's `lora` record)."""
    logdir = Path(logdir)
    final = logdir / f"checkpoint_model_{step:06d}"
    tmp = logdir / f".tmp_checkpoint_model_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({**{k: published(v) for k, v in models.items() if v is not None}, **(extra or {})}, tmp / "model.pt")
    torch.save(training_state, tmp / "training_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _complete_checkpoints(logdir) -> list:
    """[(step, folder)] of the complete checkpoints in logdir, oldest first."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in logdir.iterdir() if (m := _NAME.match(p.name))
                  and (p / "model.pt").exists() and (p / "training_state.pt").exists())


def latest_checkpoint(logdir) -> Path:
    """The newest complete checkpoint folder in logdir, or None."""
    found = _complete_checkpoints(logdir)
    return found[-1][1] if found else None


def prune_checkpoints(logdir, keep_last_n) -> list:
    """Delete all but the newest `keep_last_n` complete checkpoints (None: keep all); returns the deleted folders."""
    if keep_last_n is None:
        return []
    old = [folder for _, folder in _complete_checkpoints(logdir)[:-keep_last_n]]
    for folder in old:
        shutil.rmtree(folder)
    return old


_STEP_LINE = re.compile(r"^step (\d+) ")


def truncate_log(path, step: int) -> None:
    """Cut a run's log.txt before the first line of a step after `step`, so that a resumed run's log reads as
    one run (the steps a killed run did after its last checkpoint are run, and logged, again)."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if (m := _STEP_LINE.match(line)) and int(m.group(1)) > step),
               len(lines))
    if cut < len(lines):
        write_text_atomic(path, "".join(lines[:cut]))


def load_checkpoint(folder) -> tuple:
    """(models dict with unprefixed state dicts, training state)."""
    folder = Path(folder)
    for name in ("model.pt", "training_state.pt"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a training checkpoint (no {name})")
    models = torch_load(folder / "model.pt")
    state = torch_load(folder / "training_state.pt", weights_only=False)
    return {k: unpublished(v) for k, v in models.items()}, state
