"""Safe outputs: what may be replaced, checks before the work, temporaries and atomic commits.

The rules every command and API function that writes follows (torch-free, so the CLI
can check before it imports anything heavy):

* **Nothing the user did not name is deleted.** ``overwrite`` replaces only a previous
  slimformer output (a directory whose ``config.json`` has a ``"slimformer"`` section,
  or that holds a ``slimformer_report.json`` / :data:`ADAPTER_MARKER`; a pack file with
  the pack magic), and never a path that is, or is an ancestor of, one of the run's
  inputs (model, calibration file, policy, checkpoint).
* **Checked before the work**: the output's parent is writable (a probe directory is
  created and removed) and, where the size is known, has room for it.
* **Temporaries carry their owner.** Temporary directories/files are siblings of the
  output named ``.{name}.tmp-{host}-{pid}-{random}``; a later run removes those of
  dead processes on this host (:func:`clean_stale`) with a one-line notice, so a
  ``kill -9`` leaves nothing behind for good.
* **The output exists at every instant**: :func:`commit_dir` swaps the finished
  temporary directory with the old output in one ``renameat2(RENAME_EXCHANGE)``
  (Linux); elsewhere it falls back to two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

logger = logging.getLogger("slimformer.io.outputs")

#: marker file written into directories slimformer creates that are not models (LoRA adapters)
ADAPTER_MARKER = "slimformer_adapter.json"
REPORT_NAME = "slimformer_report.json"
#: free space kept in reserve beyond the estimated output size
SPACE_MARGIN_BYTES = 16 * 2**20
_KINDS = ("tmp", "old", "probe")


class OutputExistsError(FileExistsError):
    """The output exists and may not be replaced (not empty, not a slimformer output, or an input)."""


class OutputSpaceError(OSError):
    """The output's file system has too little free space for the estimated output."""


# ----- what may be replaced ------------------------------------------------------------------
def is_slimformer_output(path: str | os.PathLike) -> bool:
    """True for a directory slimformer wrote: config.json with a ``slimformer`` section, a
    report, or the adapter marker (and nothing that is not a regular file or directory)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / REPORT_NAME).is_file() or (path / ADAPTER_MARKER).is_file():
        return True
    cfg = path / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("slimformer"), dict)


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _local_inputs(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The inputs that are local paths (hub ids and ``None`` are skipped), resolved."""
    out = []
    for p in inputs:
        if p is None or str(p) == "":
            continue
        if os.path.lexists(os.path.expanduser(str(p))):
            out.append(_real(p))
    return out


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str = "--out") -> None:
    """Refuse an output that is one of the inputs or an ancestor of one (it would be replaced)."""
    target = _real(out)
    for inp in _local_inputs(inputs):
        if inp == target or target in inp.parents:
            rel = "is" if inp == target else "contains"
            raise OutputExistsError(f"{what} {out} {rel} the input {inp}; choose a new output path "
                                    "(an output never replaces an input)")


def check_output_dir(out: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = (), what: str = "output directory") -> Path:
    """Fail before any work unless ``out`` may become the output directory.

    ``out`` must be absent, an empty directory, or (with ``overwrite``) a previous
    slimformer output that is not and does not contain an input. Also removes stale
    temporaries of dead runs next to it and checks that its parent is writable.
    Returns ``out`` as given (not resolved).
    """
    out = Path(out)
    check_not_input(out, inputs, what)
    if out.is_symlink() and not out.exists():
        raise OutputExistsError(f"{what} {out} is a dangling symlink; remove it or choose another path")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{what} {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{what} {out} exists and is not empty; pass --overwrite to replace it")
        if not is_slimformer_output(out):
            raise OutputExistsError(f"{what} {out} is not a slimformer output (no 'slimformer' section in "
                                    "config.json, no report); --overwrite only replaces slimformer outputs: "
                                    "choose a new directory or delete it yourself")
    clean_stale(out)
    check_writable(out)
    return out


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = (), magic: bytes | None = None,
                      what: str = "output file") -> Path:
    """Fail before any work unless ``path`` may become an output file.

    An existing file is replaced only with ``overwrite`` and, when ``magic`` is given,
    only if it starts with those bytes (a file of the same kind). Directories are refused.
    """
    path = Path(path)
    check_not_input(path, inputs, what)
    if path.is_dir():
        raise OutputExistsError(f"{what} {path} is a directory; give a file name")
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"{what} {path} already exists; choose another file name or pass --overwrite")
        if magic is not None:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(len(magic))
            except OSError as exc:
                raise OutputExistsError(f"{what} {path} cannot be read ({exc.strerror}); not replacing it") from exc
            if head != magic:
                raise OutputExistsError(f"{what} {path} is not a file slimformer wrote; --overwrite only replaces "
                                        "files of the same kind: choose another name or delete it yourself")
    clean_stale(path)
    check_writable(path)
    return path


def check_json_out(path: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """A ``--json FILE`` result file: not a directory, not an input, parent writable. Existing
    files are replaced (that is what naming a result file means)."""
    if path is None:
        return
    p = Path(path)
    check_not_input(p, inputs, "--json")
    if p.is_dir():
        raise OutputExistsError(f"--json {path} is a directory; give a file name")
    check_writable(p)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an owner-named temporary sibling of ``path`` to write; on success it is renamed over
    ``path`` (default file mode), on any failure removed, and an OS error names ``path``."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = make_temp_file(path)
        os.close(fd)
        yield Path(tmp)
        _default_mode(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is None:  # interrupted inside mkstemp, after it made the file
            remove_own_temporaries(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise as_output_error(exc, path) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through an owner-named temporary sibling and an atomic rename."""
    with staged_file(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "the output") -> None:
    """Write ``data`` to ``path`` atomically, after checking the free space for it.

    Missing parents are created (and removed again if the write fails); the temporary
    sibling never survives a failure, and an OS error names ``path`` (not the temporary).
    """
    path = Path(path)
    check_free_space(path, len(data), what)
    created = make_parents(path)
    try:
        with staged_file(path) as tmp:  # an OS error already names ``path``
            tmp.write_bytes(data)
    except BaseException:
        remove_dirs(created)
        raise


# ----- before the work: writable, room ------------------------------------------------------
def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_writable(out: str | os.PathLike) -> None:
    """The directory ``out`` will be created in accepts new entries (tested by creating and
    removing a probe directory; missing parents are judged by their nearest existing ancestor)."""
    parent = _existing_parent(Path(out))
    if not parent.is_dir():
        raise OutputExistsError(f"cannot create {out}: {parent} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=temp_prefix(Path(out), "probe"), dir=parent)
    except OSError as exc:
        raise PermissionError(f"cannot write to {parent} ({exc.strerror}); choose another output path") from None
    os.rmdir(probe)


def check_free_space(out: str | os.PathLike, need_bytes: int, what: str = "the output") -> None:
    """Refuse when the file system of ``out`` has less than ``need_bytes`` (+ a margin) free."""
    parent = _existing_parent(Path(out))
    free = shutil.disk_usage(parent).free
    if free < need_bytes + SPACE_MARGIN_BYTES:
        raise OutputSpaceError(f"not enough free space for {what} in {parent}: about {_mb(need_bytes)} needed, "
                               f"{_mb(free)} free; free some space or choose another output path")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def make_parents(out: Path) -> list[Path]:
    """Create the missing parents of ``out``; returns the created ones (deepest first) for :func:`remove_dirs`."""
    created = []
    parent = out.absolute().parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    for p in reversed(created):
        p.mkdir()
    return created


def remove_dirs(dirs: Iterable[Path]) -> None:
    """Remove directories :func:`make_parents` created, if they are still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


# ----- temporaries ---------------------------------------------------------------------------
def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def temp_prefix(out: Path, kind: str = "tmp") -> str:
    """``.{name}.{kind}-{host}-{pid}-``: the owner of a temporary is in its name."""
    return f".{out.name}.{kind}-{_host()}-{os.getpid()}-"


def make_temp_dir(out: str | os.PathLike, kind: str = "tmp") -> Path:
    """A new owner-named temporary directory beside ``out``."""
    out = Path(out).absolute()
    return Path(tempfile.mkdtemp(prefix=temp_prefix(out, kind), dir=out.parent))


def make_temp_file(path: str | os.PathLike) -> tuple[int, str]:
    """A new owner-named temporary file beside ``path``: ``(fd, name)`` as :func:`tempfile.mkstemp`."""
    path = Path(path).absolute()
    return tempfile.mkstemp(prefix=temp_prefix(path, "tmp"), dir=path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``out`` left by dead processes on this host; returns what was removed."""
    out = Path(out).absolute()
    removed = []
    parent = out.parent
    if not parent.is_dir():
        return removed
    host = _host()
    for kind in _KINDS:
        prefix = f".{out.name}.{kind}-{host}-"
        try:
            entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
        except OSError:
            return removed
        for e in entries:
            pid_text = e.name[len(prefix):].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
                continue
            path = Path(e.path)
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                logger.warning("could not remove stale temporary %s of a dead run (pid %s): %s", path, pid_text, exc)
                continue
            removed.append(path)
            print(f"slimformer: removed stale temporary {path.name} of a dead run (pid {pid_text})", file=sys.stderr)
    return removed


def as_output_error(exc: BaseException, out: str | os.PathLike) -> BaseException:
    """An OS error met while writing a temporary, re-aimed at the output the user named (the
    temporary is gone by the time the message is read); other exceptions unchanged."""
    if isinstance(exc, OSError) and exc.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(exc)):
        exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # numpy's short write (tofile) on a full disk
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, OutputSpaceError):
        err = OSError(exc.errno, f"{exc.strerror or os.strerror(exc.errno)} while writing", str(out))
        err.__cause__ = exc
        return err
    return exc


# ----- committing ----------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # file system or kernel without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


def _default_mode(path: Path, mode: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike):
    """Write a directory all or nothing: yields an owner-named temporary beside ``out``, which
    is committed as ``out`` (:func:`commit_dir`) when the block ends normally. On any exception
    (Ctrl-C and SIGTERM included) the temporary and the parents made for ``out`` are removed,
    and an OS error is re-aimed at ``out`` (:func:`as_output_error`)."""
    out = Path(out).absolute()
    created = make_parents(out)
    tmp = None
    try:
        tmp = make_temp_dir(out)
        yield tmp
        commit_dir(tmp, out)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # interrupted inside mkdtemp, after it made the directory: it is ours by its name
            remove_own_temporaries(out)
        remove_dirs(created)
        raise as_output_error(exc, out) from None


def remove_own_temporaries(out: str | os.PathLike) -> None:
    """Remove the temporaries of ``out`` that this process made (their names carry its pid)."""
    out = Path(out).absolute()
    prefix = temp_prefix(out, "tmp")
    with contextlib.suppress(OSError):
        for e in os.scandir(out.parent):
            if e.name.startswith(prefix):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)


def commit_dir(tmp: Path, out: Path) -> None:
    """Move the finished temporary directory ``tmp`` into place as ``out``.

    ``out`` exists at every instant: a previous output is swapped out atomically and
    then removed. ``mkdtemp`` (and safetensors) create private files; they get the
    usual permissions first (0777/0666 minus the umask).
    """
    _default_mode(tmp, 0o777)
    for f in tmp.iterdir():
        _default_mode(f, 0o777 if f.is_dir() else 0o666)
    if out.exists():
        if exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old output (a stale tmp if we die here)
            return
        trash = make_temp_dir(out, "old")
        os.rename(out, trash / out.name)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


__all__ = [
    "ADAPTER_MARKER", "OutputExistsError", "OutputSpaceError", "check_free_space", "check_json_out",
    "check_not_input", "check_output_dir", "check_output_file", "check_writable", "clean_stale", "commit_dir",
    "as_output_error", "exchange", "is_slimformer_output", "make_parents", "make_temp_dir", "make_temp_file",
    "remove_dirs", "staged_dir",
    "temp_prefix", "write_bytes_atomic", "write_text_atomic",
]
