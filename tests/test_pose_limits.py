"""A hostile pose file (EchoMimic's per-frame ``N.pkl`` / ``N.npy`` landmarks) is refused with a
clear InputError from the shape and dtype it declares, before anything of that size is allocated
(issue 30, P2/P3: a 157-byte pickle declaring 2e8 or 4e9 elements made numpy allocate them)."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from talkfast.errors import InputError
from talkfast.face.pose import MAX_POSE_VALUES, PoseSequence, read_landmarks

SMALL_PEAK = 16 * 2**20  # bytes numpy may allocate while refusing a file (the file itself is tiny)


def _reconstruct():
    return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct (numpy.core or numpy._core)


class _Declared:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, dtype)`` with an optional BUILD state."""

    def __init__(self, shape, dtype=b"b", state=None):
        self.shape, self.dtype, self.state = shape, dtype, state

    def __reduce__(self):
        args = (_reconstruct(), (np.ndarray, self.shape, self.dtype))
        return args if self.state is None else (*args, self.state)


def _refused(path: Path, match: str) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match) as info:
            read_landmarks(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SMALL_PEAK, f"{peak / 2**20:.0f} MiB allocated while refusing {path.name}"
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("elements", [200_000_000, 4_000_000_000])  # P2, P3
def test_a_pickle_declaring_a_huge_array_is_refused_before_allocating(tmp_path: Path, elements: int) -> None:
    path = tmp_path / "0.pkl"
    path.write_bytes(pickle.dumps(_Declared((elements,)), protocol=4))
    assert path.stat().st_size < 200
    message = _refused(path, "declares an array of shape")
    assert f"({elements},)" in message and "points" in message


@pytest.mark.parametrize("declared", [
    _Declared((1,), state=(1, (50_000_000,), np.dtype("f8"), False, b"")),  # the BUILD state declares it
    _Declared((1,), state=(1, (478, 3), np.dtype("f8"), False, b"\0" * 8)),  # a shape its bytes do not fill
    _Declared((478, 3), np.dtype("V8")),  # not numbers
    _Declared((478, 3), np.dtype("O")),
    _Declared((10, 10, 10, 10)),  # more axes than a frame has
])
def test_a_pickle_declaring_what_a_frame_cannot_be_is_refused(tmp_path: Path, declared: _Declared) -> None:
    path = tmp_path / "0.pkl"
    path.write_bytes(pickle.dumps(declared, protocol=4))
    _refused(path, "pose")


def test_a_pickle_repeating_one_array_is_refused_without_expanding_it(tmp_path: Path) -> None:
    path = tmp_path / "0.pkl"
    frame = np.zeros((478, 3))
    path.write_bytes(pickle.dumps([frame] * 200_000, protocol=4))  # 400 KB of references to one array
    _refused(path, f"more than {MAX_POSE_VALUES} numbers")


def test_an_npy_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path: Path) -> None:
    from numpy.lib import format as npy

    path = tmp_path / "0.npy"
    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (200_000_000,)})
        f.write(b"\0" * 16)
    _refused(path, "declares an array of shape")
    with open(path, "wb") as f:  # a plausible header whose data is cut short
        npy.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (478, 3)})
        f.write(b"\0" * 16)
    _refused(path, "declares 11472 bytes of data, the file holds 16")


def test_real_landmark_files_still_read_as_they_were_written(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).uniform(0, 512, (478, 3))
    for dtype, order in ((np.float64, "C"), (np.float32, "F"), (np.int32, "C")):
        a = np.asarray(frame.astype(dtype), order=order)
        for protocol in (3, 4):
            (tmp_path / "0.pkl").write_bytes(pickle.dumps(a, protocol=protocol))
            got = read_landmarks(tmp_path / "0.pkl")
            assert type(got) is np.ndarray and got.dtype == np.float64
            np.testing.assert_array_equal(got, a.astype(np.float64))
        np.save(tmp_path / "0.npy", a)
        got = read_landmarks(tmp_path / "0.npy")
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, a)
    (tmp_path / "0.pkl").write_bytes(pickle.dumps(frame.tolist(), protocol=4))  # a plain list of points
    np.testing.assert_array_equal(read_landmarks(tmp_path / "0.pkl"), frame)


def test_a_pose_folder_with_a_hostile_frame_fails_with_an_input_error(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"{i}.pkl").write_bytes(pickle.dumps(np.full((478, 3), 256.0), protocol=4))
    (tmp_path / "2.pkl").write_bytes(pickle.dumps(_Declared((4_000_000_000,)), protocol=4))
    poses = PoseSequence(tmp_path, 64)
    assert tuple(poses.frames(0, 2).shape) == (2, 3, 64, 64)
    with pytest.raises(InputError, match=r"2\.pkl.*declares an array of shape \(4000000000,\)"):
        poses.frames(1, 2)
