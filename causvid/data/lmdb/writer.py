"""LatentLMDBWriter: append (latent row, prompt) pairs to an LMDB, committing in batches and resuming."""

from __future__ import annotations

import os

import lmdb
import numpy as np
import torch

from causvid.data.lmdb.layout import (  # noqa: F401  (the defaults live with the layout, torch-free)
    DEFAULT_COMMIT_EVERY, DEFAULT_MAP_SIZE, _DTYPE, LMDBDataError, _parse_meta, _shape_values, check_lmdb_file, latents_key, prompts_key, read_prompt,
    release_shared_lmdb,
)

DEFAULT_COMMIT_BYTES = 256 << 20  # ... or fewer, once this many bytes are pending


def _short(prompt: str, n: int = 60) -> str:
    """A prompt cut for error messages."""
    return repr(prompt if len(prompt) <= n else prompt[:n] + "...")


def _as_fp16_array(row) -> np.ndarray:
    """A tensor or array as a C-contiguous float16 numpy array."""
    if isinstance(row, torch.Tensor):
        row = row.detach().to(device="cpu", dtype=torch.float16).numpy()
    row = np.asarray(row)
    if not (np.issubdtype(row.dtype, np.floating)):
        raise LMDBDataError(f"latents must be floating point, got dtype {row.dtype}")
    return np.ascontiguousarray(row, dtype=_DTYPE)


class LatentLMDBWriter:
    """Append ``(latent row, prompt)`` pairs to an LMDB in the published key layout.

    * the first row fixes the row shape; every later row must match it;
    * rows are committed every ``commit_every`` rows (or ``commit_bytes`` bytes),
      each commit rewriting ``latents_shape`` / ``prompts_shape``;
    * the map starts at ``map_size`` bytes and doubles when full;
    * opening an existing database resumes it: appends continue after its rows,
      and a prompt already stored (or appended earlier) is skipped, unless unique_prompts=False.

    Use it as a context manager, or call :meth:`close` (which commits what is pending).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        map_size: int = DEFAULT_MAP_SIZE,
        commit_every: int = DEFAULT_COMMIT_EVERY,
        commit_bytes: int = DEFAULT_COMMIT_BYTES,
        unique_prompts: bool = True,
    ):
        if commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {commit_every}")
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise LMDBDataError(f"{self.path!r} is a file; an LMDB is written as a directory")
        os.makedirs(self.path, exist_ok=True)
        data = os.path.join(self.path, "data.mdb")
        if os.path.exists(data) and os.path.getsize(data):
            check_lmdb_file(self.path)  # resuming a damaged database would crash or extend the damage
        release_shared_lmdb(self.path)  # one handle per environment and process
        # False: keep rows that share a prompt (a synthetic world renders many videos per caption)
        self.unique_prompts = bool(unique_prompts)
        self.commit_every = int(commit_every)
        self.commit_bytes = int(commit_bytes)
        self.env = lmdb.open(self.path, map_size=int(map_size), readahead=False, meminit=False)
        self._pending: list[tuple[bytes, bytes, bytes, bytes]] = []  # (lat key, lat, prompt key, prompt)
        self._pending_bytes = 0
        self.num_committed, self.row_shape = self._read_existing()
        self._prompts = self._read_prompt_index()

    # -- opening
    def _read_existing(self) -> tuple[int, tuple[int, ...] | None]:
        with self.env.begin() as txn:
            return _parse_meta(txn, self.path)

    def _read_prompt_index(self) -> set[str]:
        """The prompts already stored (the dedup index, rebuilt on every open)."""
        with self.env.begin() as txn:
            return {read_prompt(txn, i) for i in range(self.num_committed)}

    # -- state
    @property
    def num_rows(self) -> int:
        """Rows in the database once pending rows are committed."""
        return self.num_committed + len(self._pending)

    def __len__(self) -> int:
        return self.num_rows

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._prompts

    # -- appending
    def _check_shape(self, row: np.ndarray, prompt: str) -> None:
        if self.row_shape is None:
            self.row_shape = tuple(row.shape)
        elif tuple(row.shape) != self.row_shape:
            raise LMDBDataError(
                f"row {self.num_rows} (prompt {_short(prompt)}) has shape {tuple(row.shape)}, "
                f"but the rows of {self.path} have shape {self.row_shape}"
            )

    def append(self, row, prompt: str) -> bool:
        """Queue one row; False (nothing written) when ``prompt`` is already stored."""
        if not isinstance(prompt, str):
            raise LMDBDataError(f"prompt must be a str, got {type(prompt).__name__}")
        if self.unique_prompts and prompt in self._prompts:
            return False
        array = _as_fp16_array(row)
        self._check_shape(array, prompt)
        i = self.num_rows
        data = array.tobytes()
        self._pending.append((latents_key(i), data, prompts_key(i), prompt.encode("utf-8")))
        self._prompts.add(prompt)
        self._pending_bytes += len(data)
        if len(self._pending) >= self.commit_every or self._pending_bytes >= self.commit_bytes:
            self.flush()
        return True

    # -- committing
    def _grow_map(self) -> None:
        self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _put_pending(self, txn: lmdb.Transaction) -> None:
        for lat_key, data, prompt_key, prompt in self._pending:
            txn.put(lat_key, data)
            txn.put(prompt_key, prompt)
        for key, value in _shape_values(self.num_rows, self.row_shape).items():
            txn.put(key, value)

    def flush(self) -> None:
        """Commit the pending rows and the updated shape keys in one transaction."""
        if not self._pending:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    self._put_pending(txn)
                break
            except lmdb.MapFullError:
                self._grow_map()  # the transaction was aborted; retry it in a bigger map
        self.num_committed += len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        """Commit what is pending and close the environment (idempotent)."""
        if self.env is None:
            return
        try:
            self.flush()
        finally:
            self.env.close()
            self.env = None

    def __enter__(self) -> "LatentLMDBWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
