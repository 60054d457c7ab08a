"""Paths as reports print them: never the machine's absolute layout when a shorter, portable form exists."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where talkfast keeps what it can rebuild (compiled kernels): ``$TALKFAST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/talkfast``, else ``~/.cache/talkfast``. Not created here."""
    own = os.environ.get("TALKFAST_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "talkfast"


def repository_root() -> Path | None:
    """The source checkout this package runs from (the folder with ``pyproject.toml`` above
    ``src/talkfast``), or None for an installed package."""
    root = PACKAGE_DIR.parents[1]
    return root if PACKAGE_DIR.parent.name == "src" and (root / "pyproject.toml").is_file() else None


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """``path`` for a report: relative to the repository when inside it, else to the working folder
    (``cwd``, default the current one), else to the package (``talkfast/...``), else ``~/...`` under
    the home folder; otherwise, and for text that is not a path (``random:small``), unchanged."""
    text = os.fspath(path)
    if not text or ":" in text.split("/", 1)[0] or not os.path.isabs(os.path.expanduser(text)):
        return text
    p = Path(os.path.expanduser(text)).resolve()
    here = Path(cwd or os.getcwd()).resolve()
    for base in (repository_root(), None if here == Path(here.anchor) else here, PACKAGE_DIR.parent):
        if base is not None and (p == base or base in p.parents):
            return p.relative_to(base).as_posix() or "."
    home = Path.home().resolve()
    if home != Path(home.anchor) and home in p.parents:
        return "~/" + p.relative_to(home).as_posix()
    return str(p)


def display_source(source) -> str:
    """A model's weights source as reports print it: a folder via :func:`display_path`, a tag such
    as "random:small" as it is."""
    text = str(source)
    return text if not text or text.startswith("random:") else display_path(text)
