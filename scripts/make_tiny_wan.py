"""Write a tiny random Wan2.1 folder in the real layout (DiT, VAE, umT5 + tokenizer), for smoke tests.

    python scripts/make_tiny_wan.py wan_models/tiny --layout wan
    python scripts/make_tiny_wan.py wan_models/tiny-diffusers --layout diffusers
"""
import argparse
import sys

from causvid.tiny_wan import write_tiny_wan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a tiny random Wan2.1 folder in the real on-disk layout.")
    p.add_argument("out", help="folder to write")
    p.add_argument("--layout", choices=["wan", "diffusers"], default="wan")
    p.add_argument("--preset", default="tiny", help="DiT size preset (causvid.models.wan.PRESETS)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    folder = write_tiny_wan(args.out, layout=args.layout, preset=args.preset, seed=args.seed)
    print(f"wrote a tiny {args.layout}-layout Wan2.1 folder to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
