"""A graph of stages run on the machine's cores: each stage starts once the stages it reads are done, the
longest chain of remaining work first (critical-path order).

A stage that is alone (nothing running, nothing else ready: everything left waits on it) runs in this process
with every core. Otherwise ready stages run side by side in worker processes of cores // workers threads each.
On 2 cores that is the faster split: a toy training step runs 1.8x faster on 2 threads than on 1, but
inference at batch 1 (the evaluation) only 1.2x, so two single-thread stages at once finish more work than one
two-thread stage, and never oversubscribe the cores. Unless the first ready stage costs at least DOMINANT times
all the others ready beside it together: side by side, a core would idle once they are done (a stage keeps its
threads), so it runs first, alone, with every core (at 1.2x for two threads, running A alone then the rest R
wins when A > 3R; at 1.8x when A > 1.1R).
"""
import concurrent.futures as futures
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Callable


DOMINANT = 4


@dataclass(frozen=True)
class Stage:
    """name: also the stage's folder; deps: stages it reads; cost: rough seconds (only the order uses it);
    fn, kwargs: what the runner calls (opaque here)."""
    name: str
    deps: tuple = ()
    cost: float = 1.0
    fn: str = ""
    kwargs: dict = field(default_factory=dict)


def cores() -> int:
    """The threads a run may use: OMP_NUM_THREADS when set (the usual way to cap them), else the cores this
    process may run on."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def critical_path(stages: dict) -> dict:
    """Each stage's cost plus the costliest chain of stages that wait on it."""
    children = {name: [] for name in stages}
    for stage in stages.values():
        for dep in stage.deps:
            children[dep].append(stage.name)
    memo = {}

    def chain(name):
        if name not in memo:
            memo[name] = stages[name].cost + max((chain(c) for c in children[name]), default=0.0)
        return memo[name]
    return {name: chain(name) for name in stages}


def run_graph(stages: dict, run: Callable[[str, int], None], done: Callable[[str], bool], workers: int,
              log=print, total_threads: int = None) -> None:
    """Run every stage not `done` (stages: name -> Stage, deps among them or done). run(name, threads) runs
    one stage; it must be picklable (a module-level function or a bound method of a picklable object), as
    it also runs in the worker processes. total_threads: the threads of the whole run (default: cores()); a
    stage alone gets them all, stages side by side total_threads // workers each."""
    unknown = {d for s in stages.values() for d in s.deps if d not in stages}
    if unknown:
        raise ValueError(f"stages read stages that do not exist: {sorted(unknown)}")
    finished = {name for name in stages if done(name)}
    pending = [name for name in stages if name not in finished]
    priority = critical_path(stages)
    all_cores = total_threads or cores()
    threads = max(1, all_cores // max(1, workers))
    running, pool = {}, None
    try:
        while pending or running:
            ready = sorted((n for n in pending if all(d in finished for d in stages[n].deps)),
                           key=priority.get, reverse=True)
            alone = ready and stages[ready[0]].cost >= DOMINANT * sum(stages[n].cost for n in ready[1:])
            if not running and ready and (alone or workers <= 1):
                pending.remove(ready[0])  # alone (or no workers): here, with every core
                run(ready[0], all_cores)
                finished.add(ready[0])
                continue
            for name in ready[:workers - len(running)]:
                if pool is None:  # spawn: a forked child of a process that ran OpenMP threads can hang
                    pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                pending.remove(name)
                running[pool.submit(run, name, threads)] = name
                log(f"[{name}] started in a worker ({threads} thread{'s' * (threads > 1)})")
            if not running:
                raise RuntimeError(f"stages wait on stages that never finish: {pending}")
            for future in futures.wait(running, return_when=futures.FIRST_COMPLETED)[0]:
                name = running.pop(future)
                future.result()  # a stage's error stops the run (the stages still running finish first)
                finished.add(name)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
