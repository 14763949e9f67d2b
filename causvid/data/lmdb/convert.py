""".pt files -> LMDB: every {prompt: tensor} of a folder's *.pt files as one row, resumable."""

from __future__ import annotations

import glob
import os

import torch

from causvid.data.lmdb.layout import LMDBDataError, _progress
from causvid.data.lmdb.writer import DEFAULT_COMMIT_EVERY, DEFAULT_MAP_SIZE, LatentLMDBWriter


def _list_pt_files(data_path: str) -> list[str]:
    """The ``*.pt`` files of a folder, sorted by name (as the original)."""
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data_path {data_path!r} is not a folder")
    files = sorted(glob.glob(os.path.join(glob.escape(data_path), "*.pt")))
    if not files:
        raise LMDBDataError(f"no *.pt files in {data_path!r}")
    return files


def _load_pt(path: str) -> dict:
    """A ``{prompt: tensor}`` file; memory-mapped when possible, so skipped prompts cost no reads."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation can't be memory-mapped
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise LMDBDataError(f"{path}: expected a {{prompt: tensor}} dict, got {type(data).__name__}")
    for prompt, value in data.items():
        if not isinstance(prompt, str) or not isinstance(value, torch.Tensor):
            raise LMDBDataError(
                f"{path}: expected a {{prompt: tensor}} dict, found a {type(prompt).__name__} key "
                f"with a {type(value).__name__} value"
            )
    return data


def row_from_value(value: torch.Tensor) -> torch.Tensor:
    """The stored row of one ``.pt`` value: the value without its leading batch dim of 1.

    ``[1, S, F, C, H, W]`` -> ``[S, F, C, H, W]`` (ODE pairs) and ``[1, F, C, H, W]`` ->
    ``[F, C, H, W]`` (VAE latents), as the original ``np.concatenate(axis=0)`` of
    batch-1 values; values already without the batch dim (``[S, F, C, H, W]`` with
    S > 1, or ``[F, C, H, W]``) are stored as they are.
    """
    if value.ndim == 6:
        if value.shape[0] != 1:
            raise LMDBDataError(f"a 6-D value must have a leading batch dim of 1, got shape {tuple(value.shape)}")
        return value[0]
    if value.ndim == 5:
        return value[0] if value.shape[0] == 1 else value
    if value.ndim == 4:
        return value
    raise LMDBDataError(
        f"expected a latent of shape [1, S, F, C, H, W], [1, F, C, H, W] or without the leading 1, "
        f"got shape {tuple(value.shape)}"
    )


def create_lmdb_from_pt(
    data_path: str | os.PathLike,
    lmdb_path: str | os.PathLike,
    map_size: int = DEFAULT_MAP_SIZE,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    progress: bool = True,
) -> dict:
    """Store every ``{prompt: tensor}`` of ``data_path/*.pt`` (sorted by name) in an LMDB.

    Rows are float16, without the leading batch 1 (see :func:`row_from_value`);
    duplicate prompts are dropped (the first one wins).  Re-running on the same
    ``lmdb_path`` after an interruption continues where the last commit ended
    and gives the same database as one uninterrupted run.

    Returns ``{"files", "written", "skipped", "num_rows", "row_shape"}``.
    """
    data_path, lmdb_path = os.fspath(data_path), os.fspath(lmdb_path)
    files = _list_pt_files(data_path)
    written = skipped = 0
    with LatentLMDBWriter(lmdb_path, map_size=map_size, commit_every=commit_every) as writer:
        for path in _progress(files, progress, desc="pt -> lmdb", unit="file"):
            for prompt, value in _load_pt(path).items():
                if prompt in writer:
                    skipped += 1
                    continue
                try:
                    writer.append(row_from_value(value), prompt)
                except LMDBDataError as e:
                    raise LMDBDataError(f"{path}: {e}") from None
                written += 1
        num_rows, row_shape = writer.num_rows, writer.row_shape
    return {"files": len(files), "written": written, "skipped": skipped, "num_rows": num_rows, "row_shape": row_shape}
