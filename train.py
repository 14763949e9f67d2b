"""Train any stage from a config (the Self-Forcing / Causal-Forcing command line); see causvid/training/cli.py.

    torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR train.py \
        --config_path configs/ar_diffusion_tf_chunkwise.yaml --logdir logs/ar_diffusion_chunkwise
"""
import sys

from causvid.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
