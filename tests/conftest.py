import os

# Under pytest-xdist (the README's `-n 2`) two workers share the machine's cores: one thread each, and the same
# for the processes the tests start, instead of every process running as many threads as there are cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run_data(tmp_path_factory):
    """A tiny Wan folder plus the datasets every training stage reads (see write_tiny_training_data)."""
    from causvid.tiny_wan import write_tiny_training_data

    return write_tiny_training_data(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="module")
def one_thread():
    """Modules of many small tensor ops (the analyser, the toy student): on a busy machine intra-op threads only
    wait for each other, so they run on one (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
