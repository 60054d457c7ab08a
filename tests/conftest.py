"""Fixtures shared by the test modules; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_torch_thread", ...)``."""

import logging
import os

# Before torch loads OpenMP, which reads these once: the test models are tiny and gain nothing from
# a second thread, and OpenMP threads spinning against another process on a busy 2-core machine turn
# seconds into minutes (a clean-clone run: 545 s for one test that takes 3 s like this). Subprocesses
# the tests start inherit them. Values exported by the caller win.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (catches tests that depend on an earlier one)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
    elif getattr(config.option, "numprocesses", None):
        # spread over pytest-xdist workers (-n): the few slow cases first, so that no worker is left
        # running a minute-long case alone at the end (collection order otherwise kept)
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP threads
    spinning against other processes slow a clip from 0.2 s to tens of seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_logging():
    """main() calls logging.basicConfig; do not let its handler (bound to a captured stderr) leak."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
