"""Checkpoints: written atomically, found again on resume, loadable by every inference CLI.

A checkpoint is a folder `checkpoint_model_{step:06d}/` holding, with `checkpoint_format: full`,
- `model.pt`: the published layout of CausVid / Self-Forcing / Causal-Forcing, `{"generator": ...,
  "generator_ema": ..., "critic": ...}` with keys prefixed `model.` (what their loaders and ours read),
  gathered on rank 0;
- `training_state.pt`: optimizers, step, data position, the EMA's start — what a resume needs beyond weights;
or, with `checkpoint_format: sharded` (a model too big to gather on one rank),
- `sharded/`: a `torch.distributed.checkpoint` folder of the weights, EMA and optimizers, each rank's shards
  written by that rank; a resume reshards it to its own world size, and every loader of the project reads its
  generator (`causvid.models.wan.checkpoints`), so `python -m causvid.export` turns it into one safetensors file;
- `training_state.pt`: step, data position, the EMA's start.
The folder is written under a temporary name and renamed when complete, so a run killed mid-save leaves the
previous checkpoint as the latest one. `keep_last_n` (config) deletes older ones; on resume the run's log.txt is
cut back to the checkpoint's step.
"""
import re
import shutil
from pathlib import Path

import torch

from causvid.models.wan.checkpoints import SHARDED, is_sharded_checkpoint, torch_load  # noqa: F401
from causvid.runtime import write_text_atomic

PREFIX = "model."
_NAME = re.compile(r"^checkpoint_model_(\d{6,})$")


def published(state: dict) -> dict:
    return {PREFIX + k: v for k, v in state.items()}


def unpublished(state: dict) -> dict:
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}


def begin_checkpoint(logdir, step: int) -> Path:
    """The (emptied) temporary folder a checkpoint is written into, renamed by `finish_checkpoint`."""
    tmp = Path(logdir) / f".tmp_checkpoint_model_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, training_state: dict) -> Path:
    """Write the training state last, then give the folder its final name: a folder that has it is complete."""
    torch.save(training_state, tmp / "training_state.pt")
    final = tmp.parent / tmp.name[len(".tmp_"):]
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def save_checkpoint(logdir, step: int, models: dict, training_state: dict, extra: dict = None) -> Path:
    """models: {"generator": sd, "generator_ema": sd or None, "critic": sd or None} (full state dicts, or a LoRA
    model's adapter); extra: entries stored beside them in model.pt as they are (a LoRA run's `lora` record)."""
    tmp = begin_checkpoint(logdir, step)
    torch.save({**{k: published(v) for k, v in models.items() if v is not None}, **(extra or {})}, tmp / "model.pt")
    return finish_checkpoint(tmp, training_state)


def _complete_checkpoints(logdir) -> list:
    """[(step, folder)] of the complete checkpoints in logdir, oldest first."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in logdir.iterdir() if (m := _NAME.match(p.name))
                  and ((p / "model.pt").exists() or is_sharded_checkpoint(p)) and (p / "training_state.pt").exists())


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
    """(models dict with unprefixed state dicts, or None for a sharded checkpoint; training state)."""
    folder = Path(folder)
    sharded = is_sharded_checkpoint(folder)
    for name in ("training_state.pt",) + (() if sharded else ("model.pt",)):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a training checkpoint (no {name})")
    state = torch_load(folder / "training_state.pt", weights_only=False)
    if sharded:
        return None, state
    models = torch_load(folder / "model.pt")
    return {k: unpublished(v) for k, v in models.items()}, state
