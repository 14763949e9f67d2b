"""The toy pipeline's stage graph runner: every stage after the stages it reads, independent ones side by side
in worker processes, a stage that is alone in this process with every thread, finished ones skipped, errors
raised. Synchronised on a barrier and marker files, never on a clock."""
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from causvid.toy.schedule import Stage, critical_path, run_graph


class Recorder:
    """A picklable run(name, threads): checks the stage's deps finished, meets the other side-by-side stages
    at the barrier (which breaks if they do not run at once), writes what it saw."""

    def __init__(self, folder, stages, barrier=None, side_by_side=(), fail=()):
        self.folder, self.stages, self.barrier = Path(folder), stages, barrier
        self.side_by_side, self.fail = set(side_by_side), set(fail)

    def __call__(self, name, threads):
        missing = [d for d in self.stages[name].deps if not (self.folder / d).exists()]
        if name in self.side_by_side:
            self.barrier.wait(timeout=120)
        if name in self.fail:
            raise RuntimeError(f"stage {name} failed")
        (self.folder / name).write_text(json.dumps({"pid": os.getpid(), "threads": threads, "missing": missing}))

    def done(self, name):
        return (self.folder / name).exists()


def _graph():
    return {"a": Stage("a", cost=5), "b": Stage("b", ("a",), cost=1), "c": Stage("c", ("a",), cost=3),
            "d": Stage("d", ("b", "c"), cost=1)}


def test_critical_path_is_the_costliest_chain_below_each_stage():
    assert critical_path(_graph()) == {"a": 5 + 3 + 1, "b": 1 + 1, "c": 3 + 1, "d": 1}


def test_independent_stages_run_side_by_side_and_lone_ones_here(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    stages = _graph()
    with multiprocessing.get_context("spawn").Manager() as manager:
        recorder = Recorder(tmp_path, stages, manager.Barrier(2), side_by_side={"b", "c"})
        run_graph(stages, recorder, recorder.done, workers=2, log=lambda *_: None)
    seen = {name: json.loads((tmp_path / name).read_text()) for name in stages}
    assert all(not s["missing"] for s in seen.values())  # each ran after the stages it reads
    assert seen["a"]["pid"] == seen["d"]["pid"] == os.getpid()  # alone: in this process, every thread
    assert seen["a"]["threads"] == seen["d"]["threads"] == 2
    assert os.getpid() not in (seen["b"]["pid"], seen["c"]["pid"])  # met at the barrier: two workers at once
    assert seen["b"]["threads"] == seen["c"]["threads"] == 1


def test_a_stage_that_dwarfs_the_others_ready_runs_first_alone_with_every_thread(tmp_path, monkeypatch):
    """Side by side, the core of the short stage would idle while the long one runs on: so a stage costing at
    least DOMINANT times the others ready beside it runs first, here, with every thread; the rest after it."""
    from causvid.toy.schedule import DOMINANT

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    stages = {**_graph(), "c": Stage("c", ("a",), cost=DOMINANT * 1)}  # b costs 1
    recorder = Recorder(tmp_path, stages)
    run_graph(stages, recorder, recorder.done, workers=2, log=lambda *_: None)
    seen = {name: json.loads((tmp_path / name).read_text()) for name in stages}
    assert all(not s["missing"] for s in seen.values())
    assert {s["pid"] for s in seen.values()} == {os.getpid()}  # c, then b, each alone here: never in a worker
    assert {s["threads"] for s in seen.values()} == {2}


def test_finished_stages_are_skipped_and_one_worker_runs_everything_here(tmp_path):
    stages = _graph()
    (tmp_path / "a").write_text(json.dumps({"pid": 0}))
    recorder = Recorder(tmp_path, stages)
    run_graph(stages, recorder, recorder.done, workers=1, log=lambda *_: None)
    assert json.loads((tmp_path / "a").read_text()) == {"pid": 0}
    assert {json.loads((tmp_path / n).read_text())["pid"] for n in "bcd"} == {os.getpid()}


def test_a_failing_stage_stops_the_run_and_unknown_deps_are_named(tmp_path):
    stages = _graph()
    recorder = Recorder(tmp_path, stages, fail={"c"})
    with pytest.raises(RuntimeError, match="stage c failed"):
        run_graph(stages, recorder, recorder.done, workers=2, log=lambda *_: None)
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError, match="'x'"):
        run_graph({"a": Stage("a", ("x",))}, recorder, recorder.done, workers=1)
