"""LMDB latent stores in the layout of the published CausVid / Causal-Forcing datasets.

One LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``) stores N rows:

====================  ==========================================================
key                   value
====================  ==========================================================
``latents_{i}_data``  raw float16 bytes (C order) of row ``i``
``prompts_{i}_data``  the UTF-8 prompt of row ``i``
``latents_shape``     ``"N S F C H W"`` (ODE pairs) or ``"N F C H W"`` (latents),
                      space-separated decimal integers
``prompts_shape``     ``"N"``
====================  ==========================================================

This is what CausVid's ``mixkit_odes_lmdb`` (rows ``4 21 16 60 104``),
``mixkit_latents_lmdb`` (rows ``21 16 60 104``), Causal-Forcing's
``ODE6KCausal_*`` (rows ``6 21 16 60 104``) and ``clean_data`` (rows
``1 21 16 60 104``) hold, so those downloads are read as they are, and what is
written here can be read by the original code.

Differences from the original writers, all invisible to readers:

* the map starts small (1 GiB) and doubles whenever it is full, instead of a
  fixed 10 TB map (a sparse file that not every filesystem/OS handles);
* rows are committed in batches, and the two ``*_shape`` keys are rewritten in
  the same transaction as the rows, so a killed process leaves a readable
  database holding every committed row;
* reopening a database with :class:`LatentLMDBWriter` resumes it: rows are
  appended after the existing ones and prompts already stored are skipped, so
  re-running :func:`create_lmdb_from_pt` / :func:`merge_lmdbs` after a crash
  ends with the same database as one uninterrupted run;
* every row's shape is checked against the first one.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import shutil
import struct
import threading
from typing import Iterable, Sequence

import lmdb
import numpy as np
import torch

from causvid.errors import UsageError

__all__ = [
    "LMDBDataError",
    "LatentLMDBWriter",
    "check_lmdb_file",
    "lmdb_errors",
    "open_lmdb_readonly",
    "shared_lmdb",
    "release_shared_lmdb",
    "read_lmdb_meta",
    "read_prompt",
    "read_row",
    "row_from_value",
    "create_lmdb_from_pt",
    "merge_lmdbs",
    "natural_sorted",
    "DEFAULT_MAP_SIZE",
]

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB; grown on demand
DEFAULT_COMMIT_EVERY = 16  # rows per transaction ...
DEFAULT_COMMIT_BYTES = 256 << 20  # ... or fewer, once this many bytes are pending
_DTYPE = np.float16

_LATENTS_SHAPE = b"latents_shape"
_PROMPTS_SHAPE = b"prompts_shape"


class LMDBDataError(UsageError):
    """A dataset file or LMDB can't be used as asked; the message says why, in one line."""


# ----------------------------------------------------------------------------- keys


def latents_key(i: int) -> bytes:
    return f"latents_{i}_data".encode()


def prompts_key(i: int) -> bytes:
    return f"prompts_{i}_data".encode()


def _shape_values(num_rows: int, row_shape: Sequence[int]) -> dict[bytes, bytes]:
    """The two ``*_shape`` entries for ``num_rows`` rows of ``row_shape``."""
    dims = " ".join(str(int(d)) for d in (num_rows, *row_shape))
    return {_LATENTS_SHAPE: dims.encode(), _PROMPTS_SHAPE: str(int(num_rows)).encode()}


def _short(prompt: str, n: int = 60) -> str:
    """A prompt cut for error messages."""
    return repr(prompt if len(prompt) <= n else prompt[:n] + "...")


# ----------------------------------------------------------------------------- reading


_MAGIC, _DATA_VERSION = 0xBEEFC0DE, 1
# an LMDB meta page (lmdb's mdb.c, 64-bit): page header (pgno, pad, flags, lower, upper), then MDB_meta: magic,
# version, address, mapsize, two MDB_db (md_pad -- the page size in the first one --, flags, depth, branch,
# leaf and overflow page counts, entries, root), the last page used, the transaction id
_META = struct.Struct("=Q2H2H" + "2I2Q" + "I2H5Q" * 2 + "2Q")


def _read_meta(head: bytes, offset: int):
    """(version, page size, last page, txn id) of the meta page at offset, or None without LMDB's magic."""
    if len(head) < offset + _META.size:
        return None
    fields = _META.unpack_from(head, offset)
    magic, version, psize = fields[5], fields[6], fields[9]
    if magic != _MAGIC:
        return None
    return version, psize, fields[-2], fields[-1]


def check_lmdb_file(path: str | os.PathLike) -> None:
    """Check ``path/data.mdb`` before LMDB maps it: an LMDB header, and a file as long as its newest meta page
    says. A truncated file would otherwise kill the process with SIGBUS when a missing page is read."""
    path = os.fspath(path)
    data = os.path.join(path, "data.mdb")
    size = os.path.getsize(data)
    again = "copy or write it again (an interrupted copy, download or write?)"
    if size == 0:
        raise LMDBDataError(f"LMDB {path}: data.mdb is empty (0 bytes); {again}")
    with open(data, "rb") as f:
        head = f.read(_META.size)
        first = _read_meta(head, 0)
        if first is None:
            raise LMDBDataError(f"LMDB {path}: data.mdb is not an LMDB file (no LMDB header); point at the folder "
                                "written by create_lmdb_iterative.py / the downloaded dataset")
        if first[0] != _DATA_VERSION:
            raise LMDBDataError(f"LMDB {path}: data.mdb has LMDB data version {first[0]}, this lmdb reads "
                                f"version {_DATA_VERSION}; write it again with this LMDB")
        psize = first[1]
        f.seek(psize)
        second = _read_meta(f.read(_META.size), 0)
    if second is None:
        raise LMDBDataError(f"LMDB {path}: data.mdb is {size} bytes, too short for its two header pages of "
                            f"{psize} bytes; {again}")
    _, _, last_page, _ = max(first, second, key=lambda meta: meta[3])  # the newest committed transaction
    need = (last_page + 1) * psize
    if size < need:
        raise LMDBDataError(f"LMDB {path}: data.mdb is truncated: {size} bytes but its header says {need} "
                            f"({last_page + 1} pages of {psize} bytes); {again}")


@contextlib.contextmanager
def lmdb_errors(path: str | os.PathLike):
    """LMDB's own errors (MDB_CORRUPTED, MDB_INVALID, ...) as LMDBDataError naming the database."""
    try:
        yield
    except lmdb.Error as e:
        path = os.fspath(path)
        text = str(e).removeprefix(f"{path}: ")
        raise LMDBDataError(f"LMDB {path}: {text}; the database is damaged: copy or write it again") from None


def open_lmdb_readonly(path: str | os.PathLike) -> lmdb.Environment:
    """A new read-only handle on an existing LMDB directory, without the lock file (as the original readers).

    The file is checked first (:func:`check_lmdb_file`). The caller closes the handle.  LMDB allows one handle
    per environment and process: long-lived readers (the datasets) use :func:`shared_lmdb` instead.
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.mdb")):
        raise FileNotFoundError(f"LMDB {path!r} not found (expected a directory holding data.mdb)")
    check_lmdb_file(path)
    with lmdb_errors(path):
        return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)


# realpath -> (pid, identity of data.mdb, env): one read-only handle per LMDB and process
_SHARED: dict[str, tuple[int, tuple[int, int], lmdb.Environment]] = {}
_SHARED_LOCK = threading.Lock()


def _identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(os.path.join(path, "data.mdb"))
    except OSError:
        raise FileNotFoundError(f"LMDB {path!r} not found (expected a directory holding data.mdb)") from None
    return st.st_dev, st.st_ino


def shared_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """This process's read-only handle on ``path``, opened on first use; do not close it.

    A handle inherited through ``fork`` (a DataLoader worker) or left on files
    that were since re-created is closed and replaced, so every process reads
    through its own handle.
    """
    path = os.fspath(path)
    key, ident, pid = os.path.realpath(path), _identity(path), os.getpid()
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is not None and entry[:2] == (pid, ident):
            return entry[2]
        if entry is not None:
            entry[2].close()
        env = open_lmdb_readonly(path)
        _SHARED[key] = (pid, ident, env)
        return env


def release_shared_lmdb(path: str | os.PathLike) -> None:
    """Close this process's shared handle on ``path``, if any (before writing or deleting it)."""
    with _SHARED_LOCK:
        entry = _SHARED.pop(os.path.realpath(os.fspath(path)), None)
        if entry is not None:
            entry[2].close()


@contextlib.contextmanager
def _reader(path: str):
    """A read-only handle for a short read: the shared one if there is one, else a temporary one."""
    with _SHARED_LOCK:
        shared = os.path.realpath(path) in _SHARED
    if shared:  # (re)validated by shared_lmdb: an inherited or stale handle would block a second open
        yield shared_lmdb(path)
        return
    env = open_lmdb_readonly(path)
    try:
        yield env
    finally:
        env.close()


def _parse_meta(txn: lmdb.Transaction, where: str) -> tuple[int, tuple[int, ...] | None]:
    """(num_rows, row_shape) from the ``*_shape`` keys; (0, None) for a database with no rows yet."""
    raw = txn.get(_LATENTS_SHAPE)
    if raw is None:
        return 0, None
    try:
        dims = tuple(int(d) for d in raw.decode().split())
    except (UnicodeDecodeError, ValueError):
        raise LMDBDataError(f"{where}: latents_shape {raw[:80]!r} is not space-separated integers") from None
    if len(dims) < 2 or min(dims) < 0:
        raise LMDBDataError(f"{where}: latents_shape {raw.decode()!r} should be 'N' followed by the row shape")
    num_rows, row_shape = dims[0], dims[1:]
    prompts = txn.get(_PROMPTS_SHAPE)
    if prompts is not None and prompts.decode(errors="replace").split()[:1] != [str(num_rows)]:
        raise LMDBDataError(
            f"{where}: latents_shape says {num_rows} rows but prompts_shape says {prompts.decode(errors='replace')!r}"
        )
    return num_rows, row_shape


def read_lmdb_meta(path: str | os.PathLike) -> tuple[int, tuple[int, ...] | None]:
    """``(num_rows, row_shape)`` of an LMDB, e.g. ``(6000, (6, 21, 16, 60, 104))``.

    ``row_shape`` is ``None`` when the database holds no rows yet.
    """
    path = os.fspath(path)
    with lmdb_errors(path), _reader(path) as env, env.begin() as txn:
        return _parse_meta(txn, path)


def _get(env_or_txn, key: bytes):
    if isinstance(env_or_txn, lmdb.Environment):
        with env_or_txn.begin() as txn:
            return txn.get(key)
    return env_or_txn.get(key)


def read_prompt(env_or_txn, i: int) -> str:
    """The prompt of row ``i``."""
    raw = _get(env_or_txn, prompts_key(i))
    if raw is None:
        raise IndexError(f"LMDB has no prompt for row {i} (key prompts_{i}_data missing)")
    return bytes(raw).decode("utf-8")


def read_row(env_or_txn, i: int, row_shape: Sequence[int]) -> tuple[np.ndarray, str]:
    """Row ``i`` as ``(float16 array of row_shape, prompt)``.

    ``env_or_txn`` is an open ``lmdb.Environment`` or a read transaction (faster
    for many reads).  The array is a read-only view over the stored bytes.
    """
    raw = _get(env_or_txn, latents_key(i))
    if raw is None:
        raise IndexError(f"LMDB has no latents for row {i} (key latents_{i}_data missing)")
    expected = math.prod(row_shape) * np.dtype(_DTYPE).itemsize
    if len(raw) != expected:
        raise LMDBDataError(
            f"row {i}: latents_{i}_data holds {len(raw)} bytes, expected {expected} "
            f"(float16 of shape {tuple(row_shape)})"
        )
    row = np.frombuffer(raw, dtype=_DTYPE).reshape(tuple(row_shape))
    return row, read_prompt(env_or_txn, i)


# ----------------------------------------------------------------------------- writing


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


# ----------------------------------------------------------------------------- .pt files -> LMDB


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


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


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


# ----------------------------------------------------------------------------- merging shards


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


def _copy_source(writer: LatentLMDBWriter, source: str, num_rows: int, row_shape, keep_slot, progress) -> tuple[int, int]:
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
