"""CausVid's DMD training command (writes to the config's output_path); see causvid/training/cli.py.

    torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR \
        causvid/train_distillation.py --config_path configs/wan_causal_dmd.yaml --no_visualize
"""
import sys

from causvid.training.cli import main

if __name__ == "__main__":
    sys.exit(main(logdir_flag=False))
