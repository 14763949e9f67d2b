import os
import shutil
from pathlib import Path

import pytest

# Under pytest-xdist (the README's `-n 2`) two workers share the machine's cores: one thread each, and the same
# for the processes the tests start, instead of every process running as many threads as there are cores.
# torch is imported in the processes that run tests, not in xdist's controller (2 s before the workers start).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _deterministic():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run_data(tmp_path_factory):
    """A tiny Wan folder plus the datasets every training stage reads, and its DiT in a toy folder (see
    write_tiny_run_data)."""
    return write_tiny_run_data(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="module")
def one_thread():
    """Modules of many small tensor ops (the analyser, the toy student): on a busy machine intra-op threads only
    wait for each other, so they run on one (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "torchrun(*jobs): the test reads these jobs' outputs (tests/torchrun_jobs.py)")
    config.addinivalue_line("markers", "long(seconds): takes about this long on 2 cores (10 s or more, pytest "
                                       "--durations): the longest tests start first")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """How pytest-xdist shares the tests between its workers (pytest.ini: --dist loadgroup, in this order):
    - the tests that read a module- or class-scoped fixture of their module run on one worker (an xdist_group),
      which builds it once instead of once per worker; the torchrun tests on one worker too, which launches the
      worlds (tests/torchrun_jobs.py) while the other runs the rest;
    - the longest first: @pytest.mark.long(seconds) and the torchrun tests (their worlds' launches, a minute),
      then the groups, then single tests, so that the run does not end on a long test with a worker idle."""
    def module_fixture(item):
        info = getattr(item, "_fixtureinfo", None)
        return info is not None and any(d.scope in ("module", "class") and d.func.__module__ == item.module.__name__
                                        for defs in info.name2fixturedefs.values() for d in defs)

    rank = {}
    for item in items:
        if item.get_closest_marker("torchrun"):
            item.add_marker(pytest.mark.xdist_group("torchrun"))
        elif module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        long = item.get_closest_marker("long")
        rank[item] = (0, -60) if item.get_closest_marker("torchrun") else (0, -(long.args or [10])[0]) if long else \
            (1, 0) if item.get_closest_marker("xdist_group") else (2, 0)
    items.sort(key=rank.__getitem__)


def _once(base, name, make):
    """make()'s (JSON) result, made once per pytest run: under pytest-xdist the first worker to ask makes it under a
    file lock in `base`, the run's folder above the workers' own, and the others wait and read it (pytest-xdist's
    recipe for a session fixture shared by the workers)."""
    import fcntl
    import json

    result = base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            result.write_text(json.dumps(make()))
        return json.loads(result.read_text())


def write_tiny_run_data(root):
    """The tiny Wan folder and datasets (causvid.tiny_wan.write_tiny_training_data), and `toy`: the same DiT in a
    toy folder, whose hashed-word text encoder needs no transformers: the torchrun jobs and the training runs
    started as processes train from it (test_training.toy_folder), as importing transformers' umT5 cost each
    process 4 s of CPU."""
    from causvid.models.wan import WanDiT
    from causvid.tiny_wan import write_tiny_training_data
    from causvid.toy.folder import write_toy_folder

    data = write_tiny_training_data(root)
    write_toy_folder(data / "toy", WanDiT.from_pretrained(data / "wan"))
    return data


class Torchrun:
    """The torchrun jobs' folders (tests/torchrun_jobs.py), their worlds launched on first use, once per run."""

    def __init__(self, tmp_path_factory, worker_id, selected):
        self.base = tmp_path_factory.getbasetemp()
        self.base = self.base if worker_id == "master" else self.base.parent  # one folder for every worker
        self.root, self.selected = self.base / "torchrun", selected
        self.data = Path(_once(self.base, "torchrun_data", lambda: str(write_tiny_run_data(
            _fresh(self.root / "data")))))
        self.worlds = {}  # world size -> {job: None, or why it failed}

    def launch(self, name):
        """Run the world of job `name` unless this run did, smaller worlds first: a job may read their outputs."""
        import torchrun_jobs

        world = torchrun_jobs.JOBS[name][0]
        for w in sorted({torchrun_jobs.JOBS[n][0] for n in self.selected}):
            if w <= world and w not in self.worlds:
                names = [n for n in torchrun_jobs.JOBS if n in self.selected and torchrun_jobs.JOBS[n][0] == w]
                self.worlds[w] = _once(self.base, f"torchrun_world{w}",
                                       lambda: torchrun_jobs.launch(w, names, self.data, self.root))
        return world

    def __call__(self, name):
        """The folder of job `name`; fails the calling test with the job's traceback if it failed."""
        world = self.launch(name)
        if self.worlds[world][name]:
            pytest.fail(f"torchrun job {name} (world {world}) failed:\n{self.worlds[world][name]}", pytrace=False)
        return self.root / name


def _fresh(folder):
    shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half-way left
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def _torchrun(request, tmp_path_factory, worker_id):
    selected = {name for item in request.session.items for mark in item.iter_markers("torchrun") for name in mark.args}
    return Torchrun(tmp_path_factory, worker_id, selected)


@pytest.fixture
def torchrun(request, _torchrun):
    """`torchrun.data` (the jobs' tiny Wan folder and datasets) and `torchrun(name)`: the folder of a job the test
    names in its @pytest.mark.torchrun."""
    names = {name for mark in request.node.iter_markers("torchrun") for name in mark.args}
    for name in names:
        _torchrun.launch(name)  # in the setup, so that --durations shows the test's own work apart

    def folder(name):
        assert name in names, f"{name}: not in the test's @pytest.mark.torchrun{tuple(sorted(names))}"
        return _torchrun(name)
    folder.data = _torchrun.data
    return folder
