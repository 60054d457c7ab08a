"""Reports print paths relative to the repository, the working folder or home, never the machine's
absolute layout when a portable form exists (talkfast.paths.display_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkfast import paths
from talkfast.models.loading import EMBEDDED_DIR

REPO = Path(__file__).resolve().parents[1]


def test_inside_the_repository() -> None:
    assert paths.repository_root() == REPO
    assert paths.display_path(EMBEDDED_DIR) == "src/talkfast/assets/small"
    assert paths.display_path(str(REPO / "docs" / "quality")) == "docs/quality"
    assert paths.display_path(REPO) == "."


def test_under_the_working_folder_or_home(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "work" / "corpus").mkdir(parents=True)
    assert paths.display_path(tmp_path / "work" / "corpus", cwd=tmp_path) == "work/corpus"
    monkeypatch.chdir(tmp_path / "work")
    assert paths.display_path(tmp_path / "work" / "corpus") == "corpus"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir("/")  # the filesystem root is no base to print paths from
    assert paths.display_path(tmp_path / "work" / "corpus") == "~/work/corpus"
    assert paths.display_path("~/work/corpus") == "~/work/corpus"


@pytest.mark.parametrize("text", ["random:small", "relative/model", "", "corpus"])
def test_text_that_is_not_an_absolute_path_is_kept(text: str) -> None:
    assert paths.display_path(text) == text


def test_elsewhere_stays_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    other = Path("/proc/self").resolve()  # not under the repository, the working folder or home
    assert paths.display_path(other) == str(other)
