"""Run a few training steps and dump losses and final weights: the tests' torchrun jobs (tests/torchrun_jobs.py)
and one-process references (test_training.in_process_worker) run it (not a test module)."""
import sys

import torch

from causvid.config import load_config
from causvid.training.trainer import Trainer


def main(config, logdir, out, *overrides):
    cfg = load_config(config, overrides=list(overrides))
    trainer = Trainer(cfg, logdir, no_visualize=True, resume="latest")
    history = trainer.train()
    from causvid.training import distributed as D
    generator = D.full_model_state(trainer.models.generator)
    ema = trainer.ema.full_state_dict(trainer.models.generator) if trainer.ema else None
    if trainer.dist.is_main:
        torch.save({"history": history, "generator": generator, "ema": ema}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
