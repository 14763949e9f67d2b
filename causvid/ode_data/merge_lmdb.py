"""Merge LMDB shards into one (Causal-Forcing's utils/merge_lmdb.py and utils/merge_and_get_clean.py).

    # ODE pairs: dataset/ODE6KCausal_chunkwise_{0..14} -> dataset/ODE6KCausal_chunkwise
    python causvid/ode_data/merge_lmdb.py --source_glob 'dataset/ODE6KCausal_chunkwise_*' \
        --target dataset/ODE6KCausal_chunkwise [--delete_sources]
    # clean latents only (rows (1, F, C, H, W)): merge_and_get_clean.py
    python causvid/ode_data/merge_lmdb.py --source_glob 'dataset/ODE6KCausal_chunkwise_*' \
        --target dataset/clean_data --keep_slot -1

Rows are re-indexed in source order (a glob is sorted naturally: _2 before _10); prompts already
in the target are skipped, so re-running an interrupted merge resumes it. Shards are deleted only
with --delete_sources, after the merged LMDB has been checked. See docs/data.md.
"""
import glob
import os
import sys

import lmdb

from causvid.errors import ArgumentParser
from causvid.data.lmdb.layout import DEFAULT_COMMIT_EVERY, LMDBDataError


def _parse_args(argv):
    p = ArgumentParser(description="Merge LMDB shards with the same row shape into one LMDB.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sources", nargs="+", help="source LMDB directories, in order")
    src.add_argument("--source_glob", help="glob of source LMDB directories (quote it), e.g. 'dataset/ODE6KCausal_chunkwise_*'")
    p.add_argument("--target", required=True, help="merged LMDB directory (resumed if it exists)")
    p.add_argument("--keep_slot", type=int, default=None,
                   help="keep only this slot of (S, F, C, H, W) rows, stored as (1, F, C, H, W); -1 gives clean_data")
    p.add_argument("--delete_sources", action="store_true",
                   help="delete the source directories once the merged LMDB is complete and checked")
    p.add_argument("--commit_every", type=int, default=DEFAULT_COMMIT_EVERY,
                   help=f"rows per transaction (default: {DEFAULT_COMMIT_EVERY})")
    return p.parse_args(argv)


def _sources(args):
    from causvid.data.lmdb.merge import natural_sorted

    if args.sources:
        return args.sources
    target = os.path.realpath(args.target)
    found = [p for p in glob.glob(args.source_glob) if os.path.isdir(p) and os.path.realpath(p) != target]
    if not found:
        raise LMDBDataError(f"--source_glob {args.source_glob!r} matches no directory")
    return natural_sorted(found)


def main(argv=None):
    args = _parse_args(argv)
    missing = [path for path in args.sources or () if not os.path.isdir(path)]
    if missing:  # before torch loads
        print(f"error: --sources {missing[0]}: no such LMDB directory", file=sys.stderr)
        return 1
    from causvid.data.lmdb.merge import merge_lmdbs

    try:
        sources = _sources(args)
        stats = merge_lmdbs(sources, args.target, keep_slot=args.keep_slot, delete_sources=args.delete_sources,
                            commit_every=args.commit_every)
    except (LMDBDataError, OSError, lmdb.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"merged {stats['sources']} LMDBs -> {args.target}: {stats['written']} rows written, "
          f"{stats['skipped']} duplicate prompts skipped; {stats['num_rows']} rows of shape {stats['row_shape']}")
    if stats["deleted"]:
        print(f"deleted {len(stats['deleted'])} source LMDBs: {' '.join(stats['deleted'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
