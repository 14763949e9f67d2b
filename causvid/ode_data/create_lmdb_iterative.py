"""Store a folder of ``{prompt: tensor}`` .pt files in an LMDB (the seeds' create_lmdb_iterative.py).

    python causvid/ode_data/create_lmdb_iterative.py --data_path ode_pairs/ --lmdb_path mixkit_odes_lmdb

Files are taken in name order; each value ([1, S, F, C, H, W] ODE pairs or [1, F, C, H, W] VAE
latents) is stored as one float16 row without its leading 1, duplicate prompts are dropped.
Re-running on the same --lmdb_path after an interruption resumes it. See docs/data.md.
"""
import os
import sys

import lmdb

from causvid.errors import ArgumentParser
from causvid.data.lmdb.layout import DEFAULT_COMMIT_EVERY, DEFAULT_MAP_SIZE, LMDBDataError


def _parse_args(argv):
    p = ArgumentParser(description="Store {prompt: tensor} .pt files as float16 rows in an LMDB.")
    p.add_argument("--data_path", required=True, help="folder of *.pt files, each a {prompt: tensor} dict")
    p.add_argument("--lmdb_path", required=True, help="LMDB directory to create, or to resume")
    p.add_argument("--map_size_gb", type=float, default=DEFAULT_MAP_SIZE / 2**30,
                   help="initial LMDB map size in GiB; it doubles whenever full (default: 1)")
    p.add_argument("--commit_every", type=int, default=DEFAULT_COMMIT_EVERY,
                   help=f"rows per transaction (default: {DEFAULT_COMMIT_EVERY})")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    if not os.path.isdir(args.data_path):  # before torch loads
        print(f"error: --data_path {args.data_path}: no such folder of .pt files", file=sys.stderr)
        return 1
    from causvid.data.lmdb.convert import create_lmdb_from_pt

    try:
        stats = create_lmdb_from_pt(args.data_path, args.lmdb_path, map_size=int(args.map_size_gb * 2**30),
                                    commit_every=args.commit_every)
    except (LMDBDataError, OSError, lmdb.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.data_path} ({stats['files']} files) -> {args.lmdb_path}: {stats['written']} rows written, "
          f"{stats['skipped']} duplicate prompts skipped; {stats['num_rows']} rows of shape {stats['row_shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
