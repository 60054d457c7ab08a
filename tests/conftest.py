"""Fixtures shared by the test modules; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_torch_thread", ...)``."""

import logging
import os
import shutil
from pathlib import Path

# Before torch loads OpenMP, which reads these once: the test models are tiny and gain nothing from
# a second thread, and OpenMP threads spinning against another process on a busy 2-core machine turn
# seconds into minutes (a clean-clone run: 545 s for one test that takes 3 s like this). Subprocesses
# the tests start inherit them. Values exported by the caller win.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
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


# a saved tiny model folder (random weights, once per module), a fresh copy of it per test, and one
# 4-frame clip of a 220 Hz tone at 16 kHz (tune, read-back and write-rule tests)
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from talkfast.models.config import get_preset
    from talkfast.models.loading import build_random, save_embedded

    net, vae = build_random(get_preset("tiny"), 0)
    return save_embedded(net, vae, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def folder(tiny_folder, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_folder, tmp_path / "model"))


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(int(0.16 * 16000)) / 16000  # one 4-frame clip of the tiny model at 25 fps
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path
