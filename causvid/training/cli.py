"""Command lines of the trainers. Three spellings of one program, as users know them from the seeds:

    torchrun ... train.py --config_path configs/ar_diffusion_tf_chunkwise.yaml --logdir logs/ar [--disable-wandb]
    torchrun ... causvid/train_distillation.py --config_path configs/wan_causal_dmd.yaml [--no_visualize]
    torchrun ... causvid/train_ode.py --config_path configs/wan_causal_ode.yaml

CausVid's forms write to the config's output_path. Trailing `key=value` arguments override config keys.
"""
import argparse
import sys

from causvid.config import ConfigError, load_config
from causvid.data.prompts import PromptFileError
from causvid.models.wan.checkpoints import CheckpointError


def parser(logdir_flag: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a Wan DiT stage (diffusion / ODE / DMD) from a config.")
    p.add_argument("--config_path", required=True)
    if logdir_flag:
        p.add_argument("--logdir", help="run folder (default: the config's output_path)")
        p.add_argument("--disable-wandb", dest="disable_wandb", action="store_true")
    p.add_argument("--no_save", action="store_true", help="write no checkpoints")
    p.add_argument("--no_visualize", action="store_true", help="write no sample videos")
    p.add_argument("--resume", action="store_const", const="latest",
                   help="continue from the latest checkpoint in the run folder")
    p.add_argument("--resume_from", dest="resume", metavar="CHECKPOINT_FOLDER",
                   help="continue from this checkpoint_model_XXXXXX folder")
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # old torch.distributed.launch
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p


def main(argv=None, logdir_flag: bool = True) -> int:
    from causvid.training.trainer import Trainer

    args = parser(logdir_flag).parse_args(argv)
    try:
        cfg = load_config(args.config_path, overrides=args.overrides)
        logdir = getattr(args, "logdir", None) or cfg.output_path
        if logdir is None:
            raise ConfigError(f"{args.config_path}: no run folder: pass --logdir or set output_path")
        trainer = Trainer(cfg, logdir, no_save=args.no_save, no_visualize=args.no_visualize,
                          disable_wandb=getattr(args, "disable_wandb", False), resume=args.resume)
    except (ConfigError, PromptFileError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.train()
    return 0
