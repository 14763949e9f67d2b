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

Files: ``layout.py`` (the keys, LMDBDataError, checks on ``data.mdb``, read-only and shared handles, reading
rows), ``writer.py`` (:class:`LatentLMDBWriter`), ``convert.py`` (``.pt`` files -> LMDB:
:func:`create_lmdb_from_pt`), ``merge.py`` (merging shards: :func:`merge_lmdbs`, :func:`natural_sorted`).
"""
import importlib

#: name -> the submodule that defines it, imported on first use (the CLIs check their flags before torch loads;
#: `writer` and `convert` need torch, `layout` does not).
_WHERE = {"create_lmdb_from_pt": "convert", "row_from_value": "convert", "merge_lmdbs": "merge",
          "natural_sorted": "merge", "LatentLMDBWriter": "writer",
          **{name: "layout" for name in ("LMDBDataError", "check_lmdb_file", "lmdb_errors", "open_lmdb_readonly",
                                         "read_lmdb_meta", "read_prompt", "read_row", "release_shared_lmdb",
                                         "shared_lmdb", "DEFAULT_MAP_SIZE", "DEFAULT_COMMIT_EVERY")}}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "DEFAULT_COMMIT_EVERY",
]
