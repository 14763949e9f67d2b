"""Steps per second and peak memory of each training stage at tiny size (a benchmark, run by hand).

    python -m scripts.benchmark_training --steps 10
    python -m scripts.benchmark_training --steps 10 --stages causal_forcing_dmd_chunkwise wan_causal_ode

Each stage runs in its own process (so peak memory is its own) through train.py on the tiny configs and data
written by causvid.tiny_wan.write_tiny_training_data; the figures are the trainer's own closing line.
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from causvid.errors import ArgumentParser
from causvid.threads import add_threads_flag

ROOT = Path(__file__).resolve().parents[1]
STAGES = [  # (config, dataset)
    ("ar_diffusion_tf_framewise", "latents"), ("ar_diffusion_tf_chunkwise", "latents"),
    ("wan_causal_ode", "ode4"), ("causal_ode_framewise", "ode6"), ("causal_ode_chunkwise", "ode6"),
    ("wan_causal_dmd", "latents"), ("wan_bidirectional_dmd", "prompts.txt"),
    ("causal_forcing_dmd_framewise", "prompts.txt"), ("causal_forcing_dmd_chunkwise", "prompts.txt"),
]


def main(argv=None):
    p = ArgumentParser(prog="python -m scripts.benchmark_training", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--stages", nargs="+", choices=[name for name, _ in STAGES], metavar="CONFIG",
                   help="only these tiny configs (default: every stage)")
    add_threads_flag(p)
    args = p.parse_args(argv)
    from causvid.tiny_wan import write_tiny_training_data

    threads = [f"--threads={args.threads}"] if args.threads else []  # each stage's train.py prints its own
    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_training_data(Path(tmp) / "data")
        print(f"{'stage':<32} {'steps/s':>8}  peak memory")
        for name, dataset in STAGES:
            if args.stages and name not in args.stages:
                continue
            cmd = [sys.executable, str(ROOT / "train.py"), "--config_path", str(ROOT / "configs/tiny" / f"{name}.yaml"),
                   "--logdir", str(Path(tmp) / name), "--no_save", "--no_visualize", "--disable-wandb", *threads,
                   f"wan_model_path={data / 'wan'}", f"real_model_path={data / 'wan'}", f"data_path={data / dataset}",
                   "generator_ckpt=null", f"max_iters={args.steps}", "log_iters=100000", "dfake_gen_update_ratio=5"]
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            m = re.search(r"\(([\d.]+) steps/s\), peak memory (.+)", out)
            print(f"{name:<32} {m.group(1) if m else 'failed':>8}  {m.group(2) if m else out[-300:]}")


if __name__ == "__main__":
    main()
