"""Files a run writes: one writer per output folder, and nothing ever half-written.

``locked_output`` holds a run's folder for one process; ``atomic_directory`` and ``write_text_atomic`` fill a
temporary sibling and rename it into place, so a run killed mid-write leaves the previous version intact.
Pictures and pages (``nas-zoo plot``, ``nas-zoo report``) carry ``MARK`` near their start: ``write_ours`` and
``ours_directory`` replace such outputs of an earlier run, and refuse anything else.
"""
import fcntl
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


class OutputError(RuntimeError):
    """An output folder this run may not write: another process holds it, or it holds what this command did not
    write; the message says which."""


@contextmanager
def locked_output(out) -> Iterator[Path]:
    """Hold ``out`` (a folder, made if needed) for this process alone while the block runs.

    The lock is ``flock`` on ``.NAME.lock`` beside ``out``: the kernel releases it when its holder dies, so a
    killed run never leaves it stuck, and a folder that is swapped whole (``atomic_directory``) can be locked.
    Folders made here that the block leaves empty (it failed early) are removed again.
    """
    out = Path(os.path.abspath(out))  # "run/.." is the folder above, not a name ".." to lock beside
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{out} is being written by {holder}; wait for it to end or choose another "
                              "output folder") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file as we opened it: lock the one there now
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        yield out
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: the run wrote something there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def temporary_sibling(path) -> Path:
    """A temporary name beside ``path`` for this process; those left by processes that died mid-save go."""
    path = Path(path)
    prefix = f".{path.name}.tmp"
    if path.parent.is_dir():
        for stale in path.parent.iterdir():
            pid = stale.name[len(prefix):]
            if stale.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    return path.with_name(f"{prefix}{os.getpid()}")


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` into ``target``: the old checkpoint is removed only once the new one is complete."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(directory) -> Iterator[Path]:
    """A temporary sibling of ``directory`` to fill; it replaces ``directory`` when the block completes."""
    target = Path(os.path.abspath(directory))  # its siblings, not those of "..": see locked_output
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``: never a half-written file."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> None:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode())


#: what every picture and page nas-zoo writes holds in its first ``MARK_WITHIN`` bytes (a PNG's Software, an
#: SVG's creator, an HTML page's generator, a Markdown comment)
MARK, MARK_WITHIN = "made by nas-zoo", 4096


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a file that holds ``MARK`` near its start: one that nas-zoo wrote."""
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(MARK_WITHIN)
    except OSError:
        return False


def write_ours(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` (which holds ``MARK``) to ``path`` atomically, where there is nothing yet or an earlier
    output of nas-zoo; any other file is the user's: refused (OutputError) and left as it is."""
    path = Path(path)
    if path.exists() and not is_ours(path):
        raise OutputError(f"{path} exists and was not written by nas-zoo; it is left as it is: choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


@contextmanager
def ours_directory(directory) -> Iterator[Path]:
    """A temporary folder to fill, which then replaces ``directory`` whole (``atomic_directory``); ``directory``
    must be absent, empty or hold outputs of nas-zoo only (``is_ours``), else it is refused and left as it is."""
    directory = Path(directory)
    with locked_output(directory):
        if directory.exists() and (not directory.is_dir() or
                                   not all(p.is_file() and is_ours(p) for p in directory.iterdir())):
            raise OutputError(f"{directory} holds files nas-zoo did not write; it is left as it is: choose another "
                              "--out")
        with atomic_directory(directory) as tmp:
            yield tmp
