"""Causal Forcing stage 2a, framewise (1-frame blocks): causal ODE data from the AR-diffusion teacher.

    torchrun --nproc_per_node=8 get_causal_ode_data_framewise.py \
        --generator_ckpt checkpoints/framewise/ar_diffusion.pt --rawdata_path dataset/clean_data \
        --output_folder dataset/ODE6KCausal_framewise_latents

The implementation (shared with get_causal_ode_data_chunkwise.py) is `causvid.ode_data.causal.causal_ode_main`.
"""
import sys

from causvid.ode_data.causal import causal_ode_main
from causvid.errors import run_cli as run

NUM_FRAME_PER_BLOCK = 1


def main(argv=None) -> int:
    return run(lambda a: causal_ode_main(a, num_frame_per_block=NUM_FRAME_PER_BLOCK), argv)


if __name__ == "__main__":
    sys.exit(main())
