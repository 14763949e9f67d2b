"""Command lines of the trainers. Three spellings of one program, as users know them from the seeds:

    torchrun ... train.py --config_path configs/ar_diffusion_tf_chunkwise.yaml --logdir logs/ar [--disable-wandb]
    torchrun ... causvid/train_distillation.py --config_path configs/wan_causal_dmd.yaml [--no_visualize]
    torchrun ... causvid/train_ode.py --config_path configs/wan_causal_ode.yaml
    python train.py --resume logs/ar [max_iters=2000]    # continue a run: its saved config and overrides

CausVid's forms write to the config's output_path. Trailing `key=value` arguments override config keys; errors
name a key as an override (`wan_model_path=FOLDER`) so the fix can be pasted. What needs no model (config, folders,
checkpoint files) is checked before torch loads; errors are one line (`causvid.errors`). SIGTERM or Ctrl-C save a
checkpoint and stop (Ctrl-C then exits with 130).
"""
import argparse
import sys
from pathlib import Path

from causvid.config import ConfigError, load_config
from causvid.errors import INTERRUPTED, ArgumentParser, UsageError, run_cli
from causvid.models.weights_file import check_weights_file
from causvid.runtime import check_output_folder, check_wan_folder
from causvid.threads import add_threads_flag, dit_width, use_threads


def parser(logdir_flag: bool) -> ArgumentParser:
    p = ArgumentParser(description="Train a Wan DiT stage (diffusion / ODE / DMD) from a config.")
    p.add_argument("--config_path", help="YAML config of the run (configs/*.yaml); not needed with --resume "
                   "RUN_FOLDER, which reads the run's saved config.yaml")
    if logdir_flag:
        p.add_argument("--logdir", help="run folder: checkpoints, log.txt, samples (default: the config's "
                       "output_path)")
        p.add_argument("--disable-wandb", dest="disable_wandb", action="store_true",
                       help="log to log.txt only, even when the config has a wandb key")
    p.add_argument("--no_save", action="store_true", help="write no checkpoints")
    p.add_argument("--no_visualize", action="store_true", help="write no sample videos")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_FOLDER",
                   help="continue from the latest checkpoint; with RUN_FOLDER alone, that run with its saved "
                        "config.yaml (which holds its overrides); key=value overrides given now apply on top and "
                        "are logged")
    p.add_argument("--resume_from", metavar="CHECKPOINT_FOLDER",
                   help="continue from this checkpoint_model_XXXXXX folder")
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # old torch.distributed.launch
    add_threads_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. lr=1e-5 max_iters=100)")
    return p


def check_inputs(cfg, logdir, logdir_flag: str, config_path, resume=None) -> None:
    """The run folder, the Wan folder, the generator's initial checkpoint and the --resume_from folder, before
    anything loads. A config key is named as the override that changes it."""
    check_output_folder(logdir, logdir_flag)
    if resume not in (None, "latest"):
        missing = [name for name in ("model.pt", "training_state.pt") if not (Path(resume) / name).is_file()]
        if missing:
            raise UsageError(f"--resume_from {resume}: not a training checkpoint folder (no {' or '.join(missing)}); "
                             "pass a checkpoint_model_XXXXXX folder of the run")
    check_wan_folder(cfg.wan_model_path, f"wan_model_path (in {config_path})",
                     fix="add the override wan_model_path=FOLDER after the flags, or set it in the config")
    if cfg.generator_ckpt is not None:
        path = Path(cfg.generator_ckpt)
        if not path.exists():
            raise UsageError(f"generator_ckpt (in {config_path}) {path}: no such file or folder; add the override "
                             "generator_ckpt=PATH, or generator_ckpt=null to start from the Wan weights")
        if path.is_file():
            check_weights_file(path)


def resolve_resume(args, logdir_flag: bool):
    """(config path, the run folder --resume names or None, resume) from --config_path / --logdir / --resume /
    --resume_from. `--resume RUN_FOLDER` alone takes the run's saved config.yaml and the run folder itself."""
    resume, logdir = args.resume, getattr(args, "logdir", None)
    if resume is not None and "=" in resume and not Path(resume).is_dir():  # `--resume lr=1e-5`: an override
        args.overrides.insert(0, resume)
        resume = "latest"
    if args.resume_from is not None:
        if resume is not None:
            raise UsageError("give --resume or --resume_from, not both")
        return args.config_path, None, args.resume_from
    if resume in (None, "latest"):
        if args.config_path is None:
            raise UsageError("--config_path is required (or --resume RUN_FOLDER to continue a run)")
        return args.config_path, None, resume
    run = Path(resume)
    if (run / "model.pt").is_file() and (run / "training_state.pt").is_file():  # a checkpoint folder
        return args.config_path or str(run.parent / "config.yaml"), str(run.parent), str(run)
    if not run.is_dir():
        raise UsageError(f"--resume {run}: no such run folder; pass the --logdir of the run to continue")
    saved = run / "config.yaml"
    if args.config_path is None and not saved.is_file():
        raise UsageError(f"--resume {run}: no config.yaml in this folder (it is written with the first checkpoint); "
                         "pass --config_path too")
    if logdir is not None and Path(logdir).resolve() != run.resolve():
        raise UsageError(f"--resume {run} and --logdir {logdir} name different run folders; give one")
    return args.config_path or str(saved), str(run), "latest"


def changed_keys(before, after, prefix="") -> list:
    """['key=new (was old)'] for every leaf of two configs that differs."""
    out = []
    for key in after:
        a, b = before.get(key), after.get(key)
        if hasattr(b, "keys") and hasattr(a, "keys"):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}={b} (was {a})")
    return out


def train(argv=None, logdir_flag: bool = True) -> int:
    args = parser(logdir_flag).parse_args(argv)
    config_path, run_folder, resume = resolve_resume(args, logdir_flag)
    cfg = load_config(config_path, overrides=args.overrides)
    logdir = getattr(args, "logdir", None) or run_folder or cfg.output_path
    if logdir is None:
        raise ConfigError(f"{config_path}: no run folder: pass --logdir or add the override output_path=FOLDER")
    where = "--logdir" if getattr(args, "logdir", None) else "--resume" if run_folder else "output_path"
    check_inputs(cfg, logdir, where, config_path, resume)
    if resume is not None and args.overrides and (Path(logdir) / "config.yaml").is_file():
        for change in changed_keys(load_config(Path(logdir) / "config.yaml"), cfg):
            print(f"resume: override {change}", flush=True)

    import torch

    from causvid.runtime import distributed_rank
    from causvid.training.trainer import Trainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    use_threads(args.threads, device, dit_width(cfg.wan_model_path),
                log=print if distributed_rank()[0] == 0 else None)
    trainer = Trainer(cfg, logdir, no_save=args.no_save, no_visualize=args.no_visualize,
                      disable_wandb=getattr(args, "disable_wandb", False), resume=resume)
    trainer.train()
    if trainer.stop_signal == "SIGINT":
        saved = "nothing saved (--no_save)" if args.no_save else f"saved step {trainer.step} in {logdir}"
        print(f"interrupted (Ctrl-C) after step {trainer.step}: {saved}; continue with --resume {logdir}",
              file=sys.stderr)
        return INTERRUPTED
    return 0


def main(argv=None, logdir_flag: bool = True) -> int:
    return run_cli(lambda a: train(a, logdir_flag), argv)
