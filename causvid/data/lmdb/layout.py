"""The key layout of an LMDB latent store (see the package docstring), checks on its file, read-only handles
(one shared per LMDB and process) and reading its rows."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from typing import Sequence

import lmdb
import numpy as np

from causvid.errors import UsageError

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB; grown on demand
DEFAULT_COMMIT_EVERY = 16  # rows per transaction ... (or fewer, see writer.DEFAULT_COMMIT_BYTES)

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


# ----------------------------------------------------------------------------- progress (convert.py, merge.py)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)
