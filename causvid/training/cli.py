"""Command lines of the trainers. Three spellings of one program, as users know them from the seeds:

    torchrun ... train.py --config_path configs/ar_diffusion_tf_chunkwise.yaml --logdir logs/ar [--disable-wandb]
    torchrun ... causvid/train_distillation.py --config_path configs/wan_causal_dmd.yaml [--no_visualize]
    torchrun ... causvid/train_ode.py --config_path configs/wan_causal_ode.yaml

CausVid's forms write to the config's output_path. Trailing `key=value` arguments override config keys.
What needs no model (config, folders, checkpoint files, the dataset) is checked before any model loads; errors
are one line (`causvid.errors`). SIGTERM or Ctrl-C save a checkpoint and stop (Ctrl-C then exits with 130).
"""
import argparse
import sys
from pathlib import Path

from causvid.config import ConfigError, load_config
from causvid.errors import INTERRUPTED, ArgumentParser, UsageError, run_cli
from causvid.models.wan.checkpoints import check_weights_file
from causvid.pipelines.text_to_video import check_wan_folder
from causvid.runtime import check_output_folder


def parser(logdir_flag: bool) -> ArgumentParser:
    p = ArgumentParser(description="Train a Wan DiT stage (diffusion / ODE / DMD) from a config.")
    p.add_argument("--config_path", required=True, help="YAML config of the run (configs/*.yaml)")
    if logdir_flag:
        p.add_argument("--logdir", help="run folder: checkpoints, log.txt, samples (default: the config's "
                       "output_path)")
        p.add_argument("--disable-wandb", dest="disable_wandb", action="store_true",
                       help="log to log.txt only, even when the config has a wandb key")
    p.add_argument("--no_save", action="store_true", help="write no checkpoints")
    p.add_argument("--no_visualize", action="store_true", help="write no sample videos")
    p.add_argument("--resume", action="store_const", const="latest",
                   help="continue from the latest checkpoint in the run folder")
    p.add_argument("--resume_from", dest="resume", metavar="CHECKPOINT_FOLDER",
                   help="continue from this checkpoint_model_XXXXXX folder")
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # old torch.distributed.launch
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. lr=1e-5 max_iters=100)")
    return p


def check_inputs(cfg, logdir, logdir_flag: str, config_path, resume=None) -> None:
    """The run folder, the Wan folder, the generator's initial checkpoint and the --resume_from folder, before
    anything loads."""
    check_output_folder(logdir, logdir_flag)
    if resume not in (None, "latest"):
        missing = [name for name in ("model.pt", "training_state.pt") if not (Path(resume) / name).is_file()]
        if missing:
            raise UsageError(f"--resume_from {resume}: not a training checkpoint folder (no {' or '.join(missing)}); "
                             "pass a checkpoint_model_XXXXXX folder of the run")
    check_wan_folder(cfg.wan_model_path, f"wan_model_path (in {config_path})")
    if cfg.generator_ckpt is not None:
        path = Path(cfg.generator_ckpt)
        if not path.exists():
            raise UsageError(f"generator_ckpt (in {config_path}) {path}: no such file or folder")
        if path.is_file():
            check_weights_file(path)


def train(argv=None, logdir_flag: bool = True) -> int:
    from causvid.training.trainer import Trainer

    args = parser(logdir_flag).parse_args(argv)
    cfg = load_config(args.config_path, overrides=args.overrides)
    logdir = getattr(args, "logdir", None) or cfg.output_path
    if logdir is None:
        raise ConfigError(f"{args.config_path}: no run folder: pass --logdir or set output_path")
    check_inputs(cfg, logdir, "--logdir" if getattr(args, "logdir", None) else "output_path", args.config_path,
                 args.resume)
    trainer = Trainer(cfg, logdir, no_save=args.no_save, no_visualize=args.no_visualize,
                      disable_wandb=getattr(args, "disable_wandb", False), resume=args.resume)
    trainer.train()
    if trainer.stop_signal == "SIGINT":
        saved = "nothing saved (--no_save)" if args.no_save else f"saved step {trainer.step} in {logdir}"
        print(f"interrupted (Ctrl-C) after step {trainer.step}: {saved}; continue with --resume", file=sys.stderr)
        return INTERRUPTED
    return 0


def main(argv=None, logdir_flag: bool = True) -> int:
    return run_cli(lambda a: train(a, logdir_flag), argv)
