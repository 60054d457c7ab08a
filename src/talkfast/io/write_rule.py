"""The one rule for every file talkfast writes.

Every writer (``generate``'s video and ``.json`` sidecar, ``batch``'s videos and ``--report``,
``tune --out`` and the tuned settings, ``bench --out``, ``train export --to``) calls
:func:`check_writes` with every path it is going to write, before any expensive work starts:

1. **Never onto an input**, not even with ``--overwrite``. An input is a file the command reads (a
   portrait, a speech file, a manifest, a sample) or any file that already exists inside a folder
   it reads (the ``--checkpoint`` folder, a corpus), except a file of the writer's own kind that
   talkfast wrote there earlier (``ours``: a video with its talkfast sidecar, a report).
2. **Never replace a file talkfast did not write** without ``--overwrite``. "Talkfast wrote it" is
   recognised by content (``ours``): a video whose sidecar is a JSON object with a ``"talkfast"``
   version (:func:`talkfast.io.video.is_talkfast_output`); a JSON report with its format's keys
   (:func:`json_with_keys`); a markdown report starting with its title line (:func:`text_starting_with`);
   a PNG plot carrying the ``Software: talkfast`` text chunk (:func:`png_by_talkfast`). A symbolic
   link at a target is never ours.
3. A target must not be a folder, and no folder above it may be a file; its folder is created and
   must be writable (tested by creating a temporary file there).

Then each file is written atomically (:func:`replacing`, :func:`write_text_atomic`, or
:func:`talkfast.io.video.write_json_atomic`): a temporary file beside it, renamed over it once
complete, so a path holds the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from talkfast.errors import OutputError

__all__ = ["PNG_MARK", "check_writes", "json_object", "json_with_keys", "png_by_talkfast", "replacing",
           "text_starting_with", "write_text_atomic"]

StrPath = str | os.PathLike[str]
Ours = Callable[[Path], bool]
#: The PNG text chunk talkfast's plots carry (``Software``), so that a later run recognises them.
PNG_MARK = ("Software", "talkfast")
_MAX_READ = 1 << 24  # a file this large is not one of talkfast's reports


def _target(path: StrPath) -> Path:
    """``path`` absolute, its folder resolved, its own name not followed (a link there is the target)."""
    raw = Path(path).expanduser()
    return raw.parent.resolve() / raw.name


def _same(a: Path, b: StrPath) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # not there (or a dangling link): not that file
        return False


def _inside(target: Path, folder: Path) -> bool:
    try:
        return target.is_relative_to(folder.resolve())
    except OSError:
        return False


def check_writes(targets: Iterable[StrPath], *, inputs: Iterable[StrPath | None] = (), overwrite: bool = False,
                 ours: Ours | None = None, mark: str = "", create: bool = True) -> list[Path]:
    """Apply the write rule (see the module) to every path of ``targets``; return them absolute.

    ``inputs``: the files and folders the command reads (None and paths that do not exist are
    ignored; a folder stands for every file under it). ``ours(path)``: whether an existing target
    is a file talkfast wrote (default: none is); ``mark`` says in words what marks it, for the
    message. ``create``: make the targets' folders (and test that they are writable). Raises
    :class:`~talkfast.errors.OutputError` naming the file, before anything is written."""
    given = [Path(p).expanduser() for p in inputs if p is not None and os.path.lexists(Path(p).expanduser())]
    out: list[Path] = []
    for raw in targets:
        p = _target(raw)
        if p.is_dir() and not p.is_symlink():
            raise OutputError(f"Output path {p} is a directory; give a file name.")
        folder = p.parent
        while not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"Cannot write {p}: {folder} is a file, not a folder.")
        mine = (lambda: ours is not None and not p.is_symlink() and ours(p))
        for g in given:
            if g.is_dir():
                if os.path.lexists(p) and _inside(p, g) and not mine():
                    raise OutputError(f"{p} is a file of the input folder {g}; talkfast never writes onto an input "
                                      "(not even with --overwrite): choose another output path.")
            elif _same(p, g):
                raise OutputError(f"Output {p} is also an input ({g}); talkfast never writes onto an input "
                                  "(not even with --overwrite): choose another output path.")
        if not overwrite and os.path.lexists(p) and not mine():
            why = "a symbolic link" if p.is_symlink() else (mark or "not a file talkfast writes")
            raise OutputError(f"{p} already exists and was not written by talkfast ({why}); refusing to replace it: "
                              "choose another output path or pass --overwrite.")
        out.append(p)
    if create:
        for folder in dict.fromkeys(p.parent for p in out):
            _writable(folder)
    return out


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the output folder {folder}: {err.strerror or err}.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write into {folder}: the folder is not writable.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".talkfast-write-test-"):
            pass
    except OSError as err:
        raise OutputError(f"Cannot write into {folder}: the folder is not writable ({err.strerror or err}).") from err


# ---------------------------------------------------------------------------------------------
# recognising talkfast's own files
# ---------------------------------------------------------------------------------------------


def json_object(path: StrPath) -> dict | None:
    """The JSON object in the regular file ``path`` (not a link), or None (anything else)."""
    p = Path(path)
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > _MAX_READ:
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def json_with_keys(*keys: str) -> Ours:
    """Recognises a JSON object holding every one of ``keys`` (a talkfast report's format)."""
    def ours(path: Path) -> bool:
        data = json_object(path)
        return data is not None and all(k in data for k in keys)

    return ours


def text_starting_with(prefix: str) -> Ours:
    """Recognises a UTF-8 text file whose first line starts with ``prefix`` (a report's title)."""
    head = prefix.encode("utf-8")

    def ours(path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                return fh.read(len(head)) == head
        except OSError:
            return False

    return ours


def png_by_talkfast(path: Path) -> bool:
    """A PNG carrying :data:`PNG_MARK` as a ``tEXt`` chunk before its image data."""
    key, value = PNG_MARK
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    chunk = b"tEXt" + key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    at = head.find(chunk)
    return at != -1 and (head.find(b"IDAT") == -1 or at < head.find(b"IDAT"))


# ---------------------------------------------------------------------------------------------
# writing atomically
# ---------------------------------------------------------------------------------------------


@contextmanager
def replacing(path: StrPath, tmp: Path | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix; or ``tmp``, a caller's own temporary name) to
    write the whole file into; on leaving the block normally it gets an ordinary new file's
    permissions and is renamed over ``path``, on an error deleted (``path`` untouched)."""
    p = Path(path)
    tmp = tmp if tmp is not None else p.with_name(f".{p.stem}.{secrets.token_hex(6)}.tmp{p.suffix}")
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Cannot write {p}: {err.strerror or err}.") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: StrPath, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replacing`."""
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)
