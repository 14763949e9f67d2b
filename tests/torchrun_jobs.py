"""The tests' multi-process runs, one torchrun per world size instead of one per test (not a test module).

Every torchrun rank imports torch, the trainer and, for a tiny Wan folder, transformers' text encoder: about 5 s of
CPU per process before a step, which the many small runs paid again and again. Here a test module registers each
run it needs as a job (`@job(world)` on a function of the shared data folder and the jobs' folder, returning what
to run and its arguments), a test names its jobs with `@pytest.mark.torchrun("name", ...)`, and the `torchrun`
fixture (tests/conftest.py) launches, once per pytest run and world size, a torchrun whose ranks run every
selected job of that size in order in one process group:

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/torchrun_jobs.py JOBS.json

Worlds run in increasing size, so a job may read what a smaller world's job wrote (world 4 resumes the checkpoint
that world 2 saved). Each job runs in ROOT/NAME (its files, and `done.rankR` / `error.rankR` with the traceback).
A rank whose job raises writes the traceback and exits at once, so torchrun stops the other ranks instead of
leaving them waiting in a collective; the launcher then fails that job, reruns the jobs after it in a new torchrun,
and the job's test fails with the traceback. Each torchrun is bounded by TIMEOUT seconds.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

TIMEOUT = 300  # seconds per torchrun: a world's jobs take well under a minute on 2 cores

# kind -> how a rank runs it: a tests/ worker's main(*args), or train.py's command line
KINDS = ("train_worker", "sp_worker", "load_worker", "train_py")

JOBS = {}  # name -> (world, build(data, root) -> (kind, args) or (kind, args, {"copy": (src, dst)}))


def job(world):
    """Register a torchrun job (the decorated function's name) of `world` processes."""
    def register(build):
        JOBS[build.__name__] = (world, build)
        return build
    return register


# -- a rank --------------------------------------------------------------------------------------------------------

def run(spec):
    import torch
    import torch.distributed as dist

    from causvid.training import distributed as D

    torch.set_num_threads(1)  # as a fresh OMP_NUM_THREADS=1 process (train.py sets its own count)
    torch.manual_seed(0)
    d = D.init_distributed()  # every job joins this group; none tears it down
    if spec.get("copy"):
        if d.is_main:
            shutil.copytree(*spec["copy"])
        dist.barrier()
    kind, args = spec["kind"], spec["args"]
    if kind == "train_py":
        from causvid.training.cli import train  # train.py's main without turning errors into one line

        code = train(args)
        if code != 0:
            raise RuntimeError(f"train.py {' '.join(args)} returned {code}")
    else:
        __import__(kind).main(*args)
    dist.barrier()  # the next job's collectives start on every rank together


def die_with_torchrun():
    """torchrun starts each rank in a session of its own, which a signal to torchrun's process group misses: on
    Linux the rank asks to be killed when its parent (torchrun) dies, as the launcher kills it on a timeout."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(jobs_file):
    die_with_torchrun()
    rank = int(os.environ["RANK"])
    for spec in json.loads(Path(jobs_file).read_text()):
        folder = Path(spec["dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"started.rank{rank}").touch()
        try:
            run(spec)
        except BaseException:
            (folder / f"error.rank{rank}").write_text(traceback.format_exc())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # torchrun ends the other ranks, wherever they wait
        (folder / f"done.rank{rank}").touch()


# -- the launcher (in a pytest process) ------------------------------------------------------------------------------

def launch(world, names, data, root, timeout=TIMEOUT):
    """Run the jobs `names` (in order) on `world` ranks; returns {name: None, or why it failed}."""
    specs = []
    for name in names:
        kind, args, *extra = JOBS[name][1](data, root)
        assert kind in KINDS, kind
        shutil.rmtree(root / name, ignore_errors=True)  # what an earlier try left
        specs.append({"name": name, "dir": str(root / name), "kind": kind, "args": [str(a) for a in args],
                      **{k: [str(p) for p in v] for k, v in (extra[0] if extra else {}).items()}})
    failures = {}
    while specs:
        jobs_file = root / f"world{world}.json"
        jobs_file.write_text(json.dumps(specs, indent=1))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               str(Path(__file__)), str(jobs_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        timed_out = False
        try:
            output = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # a timeout, or Ctrl-C: torchrun and (die_with_torchrun) its ranks go
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if timed_out:
            output = proc.communicate()[0]
        with (root / f"world{world}.log").open("a") as log:
            log.write(output)
        if proc.returncode == 0 and not timed_out:
            break
        done = lambda spec: all((Path(spec["dir"]) / f"done.rank{r}").exists() for r in range(world))  # noqa
        failed = next((i for i, spec in enumerate(specs) if not done(spec)), None)
        if failed is None:  # every job finished, torchrun did not
            failed = len(specs) - 1
        folder = Path(specs[failed]["dir"])
        errors = [e.read_text() for e in sorted(folder.glob("error.rank*"), key=lambda e: e.stat().st_mtime_ns)]
        why = "\n".join(errors) or (f"timed out after {timeout} s" if timed_out else
                                    f"torchrun exited {proc.returncode}")
        why += f"\n--- the end of torchrun's output ({root / f'world{world}.log'}) ---\n{output[-3000:]}"
        if not any(folder.glob("started.rank*")):  # nothing ran at all: every job fails the same way
            failures.update({spec["name"]: why for spec in specs[failed:]})
            break
        failures[specs[failed]["name"]] = why
        specs = specs[failed + 1:]
    return {name: failures.get(name) for name in names}


if __name__ == "__main__":  # run as a script: the workers beside this file import as top-level modules
    main(*sys.argv[1:])
