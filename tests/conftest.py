"""Fixtures shared by the test modules; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_torch_thread", ...)``."""

import logging

import pytest
import torch


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
