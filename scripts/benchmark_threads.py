"""Which thread count runs the toy-size work fastest on this machine (a benchmark, run by hand): the main job (the
shipped toy student streaming prompts/toy.txt, the README's first command) and a toy DMD training stage, each
run as the user runs it, with no --threads (the default) and with --threads 1 .. the core count, side by side
(interleaved, so every setting sees the same load). Prints medians and each setting's time as a ratio of the
best; the default (the number the CLI printed) should be within 1.2x of the best, quiet and under load.

    python -m scripts.benchmark_threads                       # both jobs, 3 rounds
    python -m scripts.benchmark_threads --jobs infer --load 2 # the main job with 2 busy processes beside it

`--load N` starts N processes that spin on the CPU for the whole run (stopped at the end): the "busy machine"
case on a quiet one. The machine's load average is printed with the table.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from causvid.errors import ArgumentParser, positive_int
from causvid.threads import cores

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--wan_model_path", "checkpoints/toy"]
SPIN = "while True: pass"


def job_command(job: str, out: Path, prompts: str, steps: int) -> list:
    if job == "infer":  # the README's main job
        return ["minimal_inference/autoregressive_inference.py", *TOY, "--prompt_file_path", prompts,
                "--output_folder", str(out), "--overwrite", "--report_timing"]
    # the README's toy training command, fewer steps, nothing saved
    return ["train.py", "--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--logdir", str(out), "--no_save",
            "--no_visualize", "wan_model_path=checkpoints/toy", "real_model_path=checkpoints/toy",
            f"data_path={prompts}", f"max_iters={steps}", "log_iters=100000"]


def run_once(job: str, threads, out: Path, prompts: str, steps: int) -> dict:
    """One run as a fresh process: wall seconds, the work's own seconds (generation / training steps), the threads
    the CLI said it used."""
    cmd = [sys.executable, *job_command(job, out, prompts, steps)] + ([f"--threads={threads}"] if threads else [])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the CLI decides, as for a user
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    said = re.search(r"^threads: (\d+)", proc.stdout, re.M)
    if job == "infer":  # milliseconds per frame (VAE decode included), the mean over the videos
        work = 1000 * statistics.mean(1 / float(fps) for fps in re.findall(r"([\d.]+) FPS with VAE decode",
                                                                            proc.stdout))
    else:
        work = float(re.search(r"done: \d+ steps? in ([\d.]+) s", proc.stdout).group(1))
    return dict(wall=wall, work=work, threads=int(said.group(1)) if said else None)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.benchmark_threads", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", default="infer,train", help="comma-separated: infer (the main job), train (toy DMD)")
    p.add_argument("--threads", type=positive_int, nargs="+", help=f"counts to try (default: 1 .. {cores()})")
    p.add_argument("--rounds", type=positive_int, default=3, help="runs of each setting, interleaved")
    p.add_argument("--steps", type=positive_int, default=10, help="training steps per train run")
    p.add_argument("--prompt_file_path", default="prompts/toy.txt", help="prompts of the main job")
    p.add_argument("--load", type=int, default=0, help="busy processes to run beside the benchmark")
    args = p.parse_args(argv)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if not jobs or set(jobs) - {"infer", "train"}:
        p.error(f"--jobs {args.jobs!r}: choose from infer, train")
    if not Path(args.prompt_file_path).is_file():
        p.error(f"--prompt_file_path {args.prompt_file_path}: no such file")
    settings = [None] + list(args.threads or range(1, cores() + 1))
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(max(0, args.load))]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for job in jobs:
                run_once(job, 1, Path(tmp) / f"{job}_warmup", args.prompt_file_path, args.steps)  # disk caches
                runs = {s: [] for s in settings}
                for r in range(args.rounds):
                    for s in settings:
                        runs[s].append(run_once(job, s, Path(tmp) / f"{job}_{r}_{s}", args.prompt_file_path,
                                                args.steps))
                        print(f"  {job} round {r + 1}, threads {s or 'default'}: {runs[s][-1]['work']:.2f} "
                              f"({runs[s][-1]['wall']:.1f} s wall)", flush=True)
                report(job, runs, args)
    finally:
        for proc in spinners:  # only the processes this run started
            proc.kill()
            proc.wait()
    print("wrote nothing (the tables above)")
    return 0


def report(job: str, runs: dict, args) -> None:
    what = "ms per frame (decode incl.)" if job == "infer" else f"{args.steps} training steps, s"
    med = {s: (statistics.median(r["work"] for r in rs), statistics.median(r["wall"] for r in rs))
           for s, rs in runs.items()}
    best = min(m[0] for m in med.values())
    print(f"\n{job}: median of {args.rounds} interleaved runs; load average {os.getloadavg()[0]:.1f} on {cores()} "
          f"cores{f', {args.load} busy processes beside it' if args.load else ''}")
    print(f"| threads | {what} | x best | process wall s |")
    print("|---|---|---|---|")
    for s, (work, wall) in med.items():
        said = runs[s][0]["threads"]
        name = f"default ({said})" if s is None else str(s)
        print(f"| {name} | {work:.2f} | {work / best:.2f} | {wall:.1f} |")
    default = med[None][0] / best
    print(f"default within {default:.2f}x of the best" + (" (goal: 1.2x)" if default > 1.2 else ""))


if __name__ == "__main__":
    sys.exit(main())
