"""How fast every command line answers when there is nothing to compute (a benchmark, run by hand): `--help`, an
unknown flag, a missing input file and a bad value, each run as a fresh process from the repository root, the
median of --runs wall-clock times. Every answer should come before torch loads (tests/test_startup.py checks that
none of them imports torch); this prints how long a newcomer waits.

    python -m scripts.benchmark_startup                     # every CLI, 5 runs each
    python -m scripts.benchmark_startup --only train.py --runs 3
    python -m scripts.benchmark_startup --repo /path/to/another/checkout   # the same table for another checkout

The load average is printed with the table: on a shared machine the times grow with it, torch's import most.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from causvid.errors import ArgumentParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--wan_model_path", "checkpoints/toy"]
OUT = ["--output_folder", "/tmp/causvid_startup_out"]
NOPE = "no/such/file"


def _cli(command: str, missing: list, bad: list) -> dict:
    """command: a script path or `-m module`; missing / bad: arguments that fail on a missing input file and on a
    bad value."""
    return dict(command=command.split(), errors={"unknown flag": ["--no_such_flag"], "missing file": missing,
                                                "bad value": bad})


#: Every command line of the repository but the live server's (its own benchmark: scripts/benchmark_serve.py).
CLIS = {
    "autoregressive_inference": _cli("minimal_inference/autoregressive_inference.py",
                                     TOY + OUT + ["--prompt_file_path", NOPE],
                                     TOY + OUT + ["--prompt_file_path", "prompts/toy.txt", "--device", "tpu"]),
    "bidirectional_inference": _cli("minimal_inference/bidirectional_inference.py",
                                    ["--config_path", NOPE] + OUT + ["--prompt_file_path", "prompts/toy.txt"],
                                    TOY + OUT + ["--prompt_file_path", "prompts/toy.txt", "--dtype", "int8"]),
    "longvideo_inference": _cli("minimal_inference/longvideo_autoregressive_inference.py",
                                TOY + OUT + ["--prompt_file_path", NOPE],
                                TOY + OUT + ["--prompt_file_path", "prompts/toy.txt", "--num_rollout", "0"]),
    "inference.py": _cli("inference.py", TOY + OUT + ["--data_path", NOPE],
                         TOY + OUT + ["--data_path", "prompts/toy.txt", "--input_video", "x.mp4", "--strength", "2"]),
    "train.py": _cli("train.py", ["--config_path", NOPE, "--logdir", "/tmp/causvid_startup_run"],
                     ["--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--threads", "0"]),
    "train_ode.py": _cli("causvid/train_ode.py", ["--resume", NOPE], ["--config_path", NOPE, "lr=abc"]),
    "train_distillation.py": _cli("causvid/train_distillation.py", ["--config_path", NOPE],
                                  ["--config_path", "configs/wan_causal_dmd.yaml", "--threads", "x"]),
    "get_causal_ode_data": _cli("get_causal_ode_data_chunkwise.py",
                                ["--generator_ckpt", NOPE, "--rawdata_path", ".", "--output_folder", "/tmp/x"],
                                ["--generator_ckpt", NOPE, "--rawdata_path", ".", "--output_folder", "/tmp/x",
                                 "--device", "tpu"]),
    "generate_ode_pairs": _cli("causvid/models/wan/generate_ode_pairs.py",
                               ["--output_folder", "/tmp/x", "--caption_path", NOPE],
                               ["--output_folder", "/tmp/x", "--caption_path", "prompts/toy.txt", "--device", "tpu"]),
    "create_lmdb_iterative": _cli("causvid/ode_data/create_lmdb_iterative.py",
                                  ["--data_path", NOPE, "--lmdb_path", "/tmp/x"],
                                  ["--data_path", ".", "--lmdb_path", "/tmp/x", "--map_size_gb", "big"]),
    "merge_lmdb": _cli("causvid/ode_data/merge_lmdb.py", ["--sources", NOPE, "--target", "/tmp/x"],
                       ["--sources", ".", "--target", "/tmp/x", "--keep_slot", "first"]),
    "compute_vae_latent": _cli("distillation_data/compute_vae_latent.py",
                               ["--input_video_folder", ".", "--output_latent_folder", "/tmp/x", "--info_path", NOPE],
                               ["--input_video_folder", ".", "--output_latent_folder", "/tmp/x", "--info_path", NOPE,
                                "--dtype", "int8"]),
    "download_mixkit": _cli("distillation_data/download_mixkit.py", ["--local_dir", NOPE, "--skip_download"],
                            ["--local_dir", "/tmp/x", "--workers", "many"]),
    "move_mixkit": _cli("distillation_data/move_mixkit.py", [NOPE], [".", "--dry_run", "yes"]),
    "slice_video": _cli("distillation_data/slice_video.py",
                        ["--input_folder", ".", "--output_folder", "/tmp/x", "--anno_json", NOPE, "--output_json",
                         "/tmp/x.json"],
                        ["--input_folder", ".", "--output_folder", "/tmp/x", "--anno_json", NOPE, "--output_json",
                         "/tmp/x.json", "--workers", "many"]),
    "process_mixkit": _cli("distillation_data/process_mixkit.py", ["--input_dir", NOPE, "--output_dir", "/tmp/x"],
                           ["--input_dir", ".", "--output_dir", "/tmp/x", "--fps", "fast"]),
    "merge_json": _cli("distillation_data/merge_json.py",
                       ["--input1", NOPE, "--input2", NOPE, "--output", "/tmp/x.json"],
                       ["--input1", NOPE, "--input2", NOPE, "--output", "/tmp/x.json", "--mode", "mix"]),
    "export": _cli("-m causvid.export", ["--wan_model_path", NOPE, "--to", "wan", "--out", "/tmp/x"],
                   ["--wan_model_path", "checkpoints/toy", "--to", "lora", "--rank", "0", "--out", "/tmp/x.safetensors"]),
    "toy.pipeline": _cli("-m causvid.toy.pipeline", ["--out", "/etc/hostname"], ["--workers", "0"]),
    "toy.streaming": _cli("-m causvid.toy.streaming", ["--checkpoint", NOPE], ["--strengths", "a,b"]),
    "make_tiny_wan": _cli("-m scripts.make_tiny_wan", ["/etc/hostname/tiny"], ["/tmp/x", "--layout", "onnx"]),
    "benchmark_threads": _cli("-m scripts.benchmark_threads", ["--prompt_file_path", NOPE], ["--threads", "0"]),
    "benchmark_startup": _cli("-m scripts.benchmark_startup", ["--repo", NOPE], ["--runs", "0"]),
    "benchmark_memory": _cli("-m scripts.benchmark_memory", ["--plan", "--plan_from", NOPE], ["--budget_gb", "x"]),
    "benchmark_training": _cli("-m scripts.benchmark_training", ["--stages", NOPE], ["--steps", "x"]),
    "device_check": _cli("-m scripts.device_check", ["--smoke", "--out", "/etc/hostname/x.json"],
                         ["--out", "/tmp/x.json", "--repeats", "0"]),
    "benchmark_inference": _cli("-m scripts.benchmark_inference", ["--config", NOPE], ["--frames", "x"]),
    "benchmark_stream": _cli("-m scripts.benchmark_stream", ["--checkpoint", NOPE], ["--switch_at", "0"]),
    "benchmark_step_schedules": _cli("-m scripts.benchmark_step_schedules", ["--checkpoint", NOPE],
                                     ["--schedules", "4>3"]),
}


def argv_of(cli: dict, repo: Path) -> list:
    """The command as this checkout runs it (`-m scripts.x` in a checkout that still has scripts/x.py as a file
    script runs that file)."""
    command = cli["command"]
    if command[0] == "-m" and not (repo / Path(*command[1].split("."))).is_dir():
        as_file = repo / (command[1].replace(".", "/") + ".py")
        if command[1].startswith("scripts.") and as_file.is_file() and not (repo / "scripts" / "__init__.py").exists():
            return [str(as_file.relative_to(repo))]
    return command


def timed(argv: list, repo: Path) -> tuple:
    """(seconds, exit code, stderr's last line) of one fresh process."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return seconds, proc.returncode, last


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.benchmark_startup", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per cell; the median is printed")
    p.add_argument("--only", nargs="+", metavar="CLI", help=f"some of: {', '.join(CLIS)}")
    p.add_argument("--repo", default=str(ROOT), help="the checkout to time (default: this one)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: give at least 1")
    repo = Path(args.repo).resolve()
    if not (repo / "causvid").is_dir():
        p.error(f"--repo {args.repo}: not a checkout of this project (no causvid/ in it)")
    unknown = sorted(set(args.only or ()) - set(CLIS))
    if unknown:
        p.error(f"--only {unknown}: not a CLI here; choose from {', '.join(CLIS)}")
    columns = ["--help", *next(iter(CLIS.values()))["errors"]]
    print(f"{repo}: median of {args.runs} runs, seconds; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"| {'CLI':<26} | " + " | ".join(f"{c:>12}" for c in columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    worst = 0.0
    for name, cli in CLIS.items():
        if args.only and name not in args.only:
            continue
        command = argv_of(cli, repo)
        cells = []
        for flags in [["--help"], *cli["errors"].values()]:
            runs = [timed(command + flags, repo) for _ in range(args.runs)]
            median = statistics.median(r[0] for r in runs)
            code = runs[0][1]
            cells.append(f"{median:8.2f}" + (f" ({code})" if code not in (0, 1, 2) else "    "))
            worst = max(worst, median)
        print(f"| {name:<26} | " + " | ".join(f"{c:>12}" for c in cells) + " |",
              flush=True)
    print(f"slowest answer: {worst:.2f} s (an exit code other than 0/1/2 is shown in brackets)")
    print("wrote nothing (the table above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
