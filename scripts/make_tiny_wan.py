"""Write a tiny random Wan2.1 folder in the real layout (DiT, VAE, umT5 + tokenizer), for smoke tests.

    python -m scripts.make_tiny_wan wan_models/tiny --layout wan
    python -m scripts.make_tiny_wan wan_models/tiny-diffusers --layout diffusers
"""
import sys

from causvid.errors import ArgumentParser, run_cli
from causvid.runtime import check_output_folder
from causvid.threads import add_threads_flag, use_threads


def _main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.make_tiny_wan",
                       description="Write a tiny random Wan2.1 folder in the real on-disk layout.")
    p.add_argument("out", help="folder to write")
    p.add_argument("--layout", choices=["wan", "diffusers"], default="wan")
    p.add_argument("--preset", default="tiny", help="DiT size preset (causvid.models.wan.PRESETS)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_flag(p)
    args = p.parse_args(argv)
    check_output_folder(args.out, "out")
    from causvid.tiny_wan import write_tiny_wan

    use_threads(args.threads, "cpu", 32)  # a tiny model
    folder = write_tiny_wan(args.out, layout=args.layout, preset=args.preset, seed=args.seed)
    print(f"wrote a tiny {args.layout}-layout Wan2.1 folder to {folder}")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
