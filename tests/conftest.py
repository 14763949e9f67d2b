import pytest
import torch


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
