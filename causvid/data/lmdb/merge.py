"""Merging LMDB shards into one (optionally keeping one ODE slot), resumable, checked before sources go."""

from __future__ import annotations

import math
import os
import re
import shutil
from typing import Iterable, Sequence

import numpy as np

from causvid.data.lmdb.layout import (
    _DTYPE, LMDBDataError, _progress, _reader, read_lmdb_meta, read_prompt, read_row, release_shared_lmdb,
)
from causvid.data.lmdb.writer import DEFAULT_COMMIT_EVERY, DEFAULT_MAP_SIZE, LatentLMDBWriter


def natural_sorted(paths: Iterable[str]) -> list[str]:
    """Sort so that ``x_2`` comes before ``x_10``."""
    return sorted(paths, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])


def _check_sources(sources: Sequence[str], target: str) -> None:
    if not sources:
        raise LMDBDataError("no source LMDBs to merge")
    real = [os.path.realpath(s) for s in sources]
    if len(set(real)) != len(real):
        raise LMDBDataError(f"a source LMDB is listed twice: {list(sources)}")
    target_real = os.path.realpath(target)
    for s, r in zip(sources, real):
        if r == target_real or target_real.startswith(r + os.sep):
            raise LMDBDataError(f"the target {target!r} is (inside) the source {s!r}")


def _common_row_shape(sources: Sequence[str], metas: Sequence[tuple[int, tuple | None]]) -> tuple[int, ...]:
    """The row shape shared by every non-empty source; an error naming the first one that differs."""
    first = None
    for source, (n, shape) in zip(sources, metas):
        if shape is None:
            continue
        if first is None:
            first = (source, shape)
        elif shape != first[1]:
            raise LMDBDataError(
                f"cannot merge: rows of {source} have shape {shape}, rows of {first[0]} have shape {first[1]}"
            )
    if first is None:
        raise LMDBDataError(f"cannot merge: all {len(sources)} source LMDBs are empty")
    return first[1]


def _kept_shape(row_shape: tuple[int, ...], keep_slot: int | None, where: str) -> tuple[int, ...]:
    """The merged row shape: rows as they are, or ``(1, F, C, H, W)`` when keeping one slot."""
    if keep_slot is None:
        return row_shape
    if len(row_shape) != 5:
        raise LMDBDataError(
            f"keep_slot needs rows of shape (S, F, C, H, W) (latents_shape 'N S F C H W'); "
            f"{where} has rows of shape {row_shape}"
        )
    if not -row_shape[0] <= keep_slot < row_shape[0]:
        raise LMDBDataError(f"keep_slot {keep_slot} is out of range for rows with {row_shape[0]} slots")
    return (1, *row_shape[1:])


def _keep_slot(row: np.ndarray, keep_slot: int | None) -> np.ndarray:
    """Slot ``keep_slot`` of an (S, F, C, H, W) row, keeping the slot dim: (1, F, C, H, W)."""
    if keep_slot is None:
        return row
    return row[keep_slot][None]


def _estimate_map_size(num_rows: int, row_shape: Sequence[int]) -> int:
    """Room for ``num_rows`` rows plus 10 % (page overhead, prompts); at least the default."""
    need = num_rows * math.prod(row_shape) * np.dtype(_DTYPE).itemsize
    return max(DEFAULT_MAP_SIZE, int(need * 1.1) + (64 << 20))


def _copy_source(
    writer: LatentLMDBWriter, source: str, num_rows: int, row_shape, keep_slot, progress
) -> tuple[int, int]:
    """Append one shard's rows to ``writer``; returns (written, skipped)."""
    written = skipped = 0
    with _reader(source) as env, env.begin() as txn:
        for i in _progress(range(num_rows), progress, desc=os.path.basename(source), unit="row"):
            if read_prompt(txn, i) in writer:
                skipped += 1
                continue
            row, prompt = read_row(txn, i, row_shape)
            writer.append(_keep_slot(row, keep_slot), prompt)
            written += 1
    return written, skipped


def _source_prompts(source: str, num_rows: int) -> set[str]:
    with _reader(source) as env, env.begin() as txn:
        return {read_prompt(txn, i) for i in range(num_rows)}


def _verify_merged(target: str, sources: Sequence[str], metas, row_shape: tuple[int, ...]) -> int:
    """Check the merged LMDB before deleting anything: shape, row count, every source prompt present."""
    num_rows, shape = read_lmdb_meta(target)
    if shape != row_shape:
        raise LMDBDataError(f"merged LMDB {target} has rows of shape {shape}, expected {row_shape}")
    merged = _source_prompts(target, num_rows)
    if len(merged) != num_rows:
        raise LMDBDataError(f"merged LMDB {target} holds {num_rows} rows but {len(merged)} distinct prompts")
    with _reader(target) as env, env.begin() as txn:
        read_row(txn, num_rows - 1, shape)  # the last row is there, with the right size
    for source, (n, _) in zip(sources, metas):
        missing = len(_source_prompts(source, n) - merged)
        if missing:
            raise LMDBDataError(f"merged LMDB {target} lacks {missing} prompts of {source}; sources kept")
    return num_rows


def merge_lmdbs(
    sources: Sequence[str | os.PathLike],
    target: str | os.PathLike,
    keep_slot: int | None = None,
    delete_sources: bool = False,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    progress: bool = True,
) -> dict:
    """Merge LMDB shards (same row shape) into one, re-indexing rows 0..N-1 in source order.

    * ``keep_slot``: keep only that slot of (S, F, C, H, W) rows, as ``(1, F, C, H, W)``
      (``-1`` gives Causal-Forcing's ``clean_data`` from the ``ODE6KCausal`` shards);
    * prompts already in the target (an interrupted earlier merge) or seen in an
      earlier shard are skipped, so re-running a merge resumes it;
    * ``delete_sources``: remove the shard directories, only after the merged
      database has been re-opened and checked (row shape, row count, every
      source prompt present).

    Returns ``{"sources", "written", "skipped", "num_rows", "row_shape", "deleted"}``.
    """
    sources = [os.fspath(s) for s in sources]
    target = os.fspath(target)
    _check_sources(sources, target)
    metas = [read_lmdb_meta(s) for s in sources]
    row_shape = _common_row_shape(sources, metas)
    out_shape = _kept_shape(row_shape, keep_slot, sources[0])
    total = sum(n for n, _ in metas)
    written = skipped = 0
    with LatentLMDBWriter(target, map_size=_estimate_map_size(total, out_shape), commit_every=commit_every) as writer:
        if writer.row_shape is not None and writer.row_shape != out_shape:
            raise LMDBDataError(
                f"target {target} already holds rows of shape {writer.row_shape}; merged rows have shape {out_shape}"
            )
        for source, (n, _) in zip(sources, metas):
            w, s = _copy_source(writer, source, n, row_shape, keep_slot, progress)
            written, skipped = written + w, skipped + s
    num_rows = _verify_merged(target, sources, metas, out_shape) if delete_sources else read_lmdb_meta(target)[0]
    if delete_sources:
        for source in sources:
            release_shared_lmdb(source)
            shutil.rmtree(source)
    return {
        "sources": len(sources),
        "written": written,
        "skipped": skipped,
        "num_rows": num_rows,
        "row_shape": out_shape,
        "deleted": list(sources) if delete_sources else [],
    }
