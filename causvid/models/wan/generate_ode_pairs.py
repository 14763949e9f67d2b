"""CausVid's ODE pairs, at the path the seed's README runs (an entry point only; the logic is
`causvid.ode_data.pairs`, where the options are described):

    torchrun --nproc_per_node 8 causvid/models/wan/generate_ode_pairs.py \
        --output_folder datasets/odes --caption_path sample_dataset/mixkit_prompts.txt
"""
import sys

from causvid.ode_data.pairs import generate
from causvid.errors import run_cli as run


def main(argv=None) -> int:
    return run(generate, argv)


if __name__ == "__main__":
    sys.exit(main())
