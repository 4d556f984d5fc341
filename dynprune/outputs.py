"""Where dynprune writes: run folders and output paths that never overwrite a user's files unasked.

- A run folder (``train``, ``search``, ``png``) that holds another run's files needs ``resume`` (continue it)
  or ``overwrite`` (its run files are deleted once the new run has passed its start-up checks; nothing
  else in the folder is touched). One process writes a run folder or an output file at a time
  (:class:`FolderLock`).
- An output folder or file is never an input of the same command, never a file where a folder is
  wanted (or the reverse), and an existing output file is replaced only when asked.
- Inputs whose outputs would share a name (``a.png`` and ``a.jpg`` both give ``a.png``) are refused.
- Every file is written by :func:`write_output`: into a temporary file beside it, then moved into place,
  so a kill leaves the old file or the new one, and a symbolic or hard link at the output's name is
  replaced, never written through (an input it points at stays intact); a new output is created
  exclusively, and a folder that resolves outside the output folder is refused.

Every check runs before any long work starts; each raises ``ValueError`` naming the paths. A run's
JSON-lines log (:class:`RunLog`) is rewound to its checkpoint when the run resumes.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Sequence

__all__ = ["write_output", "write_text", "set_writer", "check_writable", "claim_run_dir", "Replaced", "FolderLock", "lock_output_file", "LOCK_NAME", "checkpoint_note", "check_output_dir", "check_output_file", "check_name_collisions", "RunLog"]


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


_writer = True  # set_writer
_UMASK = os.umask(0)
os.umask(_UMASK)


def set_writer(writes: bool) -> None:
    """Whether this process writes files (:func:`write_output`): a run under torchrun sets it False on every
    rank but 0, so methods' own files (``base.pt``, plans, ``validation.json``) are written once."""
    global _writer
    _writer = bool(writes)


def write_output(path: str | Path, write: Callable[[IO[bytes]], None], replace: bool = True,
                 root: str | Path | None = None) -> Path:
    """Write ``path`` through ``write(binary file)`` safely (module doc): a temporary file in the same folder,
    flushed and fsynced, then renamed over ``path`` (``replace``) or hard-linked to it only if nothing is
    there (``replace=False``: an output created exclusively). A link at ``path`` is replaced, never followed.

    Args:
        root: the output folder ``path`` must stay in once links are resolved (e.g. a linked subfolder).
    Returns:
        ``path``.
    Raises:
        ValueError: ``path``'s folder resolves outside ``root``; ``replace=False`` and ``path`` exists (made
        meanwhile by someone else); the disk is full or the folder is not writable (the old file, if any,
        is intact).
    """
    path = Path(path)
    if not _writer:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if root is not None and not path.parent.resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"output {str(path)!r} would be written to {str(path.parent.resolve())!r}, outside the output "
                         f"folder {str(root)!r} (a linked folder): refused")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ValueError(f"cannot write {str(path)!r}: {err.strerror}") from err
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the permissions a plain open() would give (mkstemp's are 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise ValueError(f"output {str(path)!r} appeared while dynprune wrote it (another process?): left as "
                         "it is") from None
    except OSError as err:
        what = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror
        raise ValueError(f"cannot write {str(path)!r}: {what}" + ("; the previous file is intact"
                                                                  if path.exists() else "")) from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Check, before any work, that files can be created in ``folder``: the folders it lacks are made for
    the check and removed again, so a command refused later leaves nothing behind.

    Raises:
        ValueError: it cannot be created or written (a file on its path, a read-only or missing location).
    """
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dynprune-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"cannot write the {what} {str(folder)!r}: {err.strerror or err}") from None
    finally:
        for p in made:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
    return folder


def write_text(path: str | Path, text: str, replace: bool = True, root: str | Path | None = None) -> Path:
    """:func:`write_output` of UTF-8 ``text``."""
    return write_output(path, lambda f: f.write(text.encode()), replace, root)


def claim_run_dir(out: str | Path, patterns: Sequence[str], resume: bool, overwrite: bool,
                  what: str = "run") -> tuple[Path, "Replaced"]:
    """Make ``out`` ready for a run whose files match the glob ``patterns`` (e.g. ``last.pt``): created and
    locked for this process (:class:`FolderLock`, held until the process ends or ``release``).

    Returns:
        (``out``, the :class:`Replaced` files of the run that ``overwrite`` replaces: nothing is deleted
        until the new run calls its ``remove()``, after every start-up check has passed).
    Raises:
        ValueError: ``out`` is a file; both ``resume`` and ``overwrite``; it holds run files and neither was
        given (the files are named); another process is writing into it (its id named).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} folder {str(out)!r} is a file")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or replace it")
    check_writable(out, f"{what} folder").mkdir(parents=True, exist_ok=True)
    FolderLock.acquire(out / LOCK_NAME, f"{what} folder {str(out)!r}")
    found = sorted(p for p in out.iterdir()
                   if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))
    if found and not resume and not overwrite:
        raise ValueError(f"{what} folder {str(out)!r} already holds a {what} ({', '.join(p.name for p in found)}): "
                         "pass --resume to continue it, --overwrite to replace it, or choose another out_dir")
    return out, Replaced(found if overwrite else [])


LOCK_NAME = ".dynprune.lock"


class Replaced:
    """The files of a run that ``--overwrite`` replaces, deleted by :meth:`remove` once the new run has passed
    its start-up checks (a run that fails on a bad option leaves the old one whole). A file written again
    since it was listed (same name, another inode or time) is the new run's and stays."""

    def __init__(self, files: Sequence[Path]):
        self.files = [(p, p.stat()) for p in files]

    def remove(self) -> None:
        for p, st in self.files:
            try:
                now = p.stat()
            except FileNotFoundError:
                continue
            if (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
                p.unlink()
        self.files = []


class FolderLock:
    """One writer per run folder or output file: an exclusive, non-blocking OS lock (``fcntl.flock``) on a
    lock file, holding the writer's process id. The OS drops it when the process ends, however it ends, so
    the lock of a dead process never blocks. Within one process the lock is counted (a library caller may
    build several runs of one folder in turn); :meth:`release` undoes one :meth:`acquire`.
    On a system without ``fcntl`` (Windows) nothing is locked."""

    _held: dict[str, list] = {}  # resolved lock path -> [file object, count]

    @classmethod
    def acquire(cls, path: Path, what: str) -> None:
        """Take the lock at ``path`` (created).

        Raises:
            ValueError: another process holds it (``what`` and that process's id named).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        key = str(Path(path).resolve())
        if key in cls._held:
            cls._held[key][1] += 1
            return
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ValueError(f"{what} is in use by another dynprune process (pid {holder}): wait for it to end, or "
                             "write elsewhere") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        cls._held[key] = [f, 1]

    @classmethod
    def release(cls, path: Path) -> None:
        """Give back one acquisition of the lock at ``path`` (the last one unlocks it)."""
        key = str(Path(path).resolve())
        entry = cls._held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del cls._held[key]
            entry[0].close()  # closing the descriptor drops the flock


def lock_output_file(out: str | Path) -> Path:
    """Lock an output file (``deploy``/``calibrate``) for this process through ``.<name>.lock`` beside it.

    Returns:
        The lock file's path (for :meth:`FolderLock.release`).
    Raises:
        ValueError: another process writes the same output (its id named).
    """
    out = Path(out)
    check_writable(out.parent, "folder of the output").mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    FolderLock.acquire(lock, f"output {str(out)!r}")
    return lock


def checkpoint_note(out: str | Path, name: str = "last.pt") -> str:
    """What a failed run leaves behind, for its error message: ``"last checkpoint kept at OUT/NAME"`` or
    ``"no checkpoint was written yet"`` (``name``: the run's checkpoint file in ``out``)."""
    last = Path(out) / name
    return f"last checkpoint kept at {last}" if last.is_file() else "no checkpoint was written yet"


class RunLog:
    """A run's JSON-lines log: one dict per line, appended as the run goes.

    A run killed between two checkpoints has logged steps that its checkpoint does not hold; the resumed
    run computes them again (bit-identically), so it first calls :meth:`rewind`, and the log of a resumed
    run equals the log of an uninterrupted one (no step twice).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, rec: dict) -> None:
        """Append one row (flushed at once, so a kill loses no logged row)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def rows(self) -> list[dict]:
        """Every row, in order ([] when there is no log yet)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewind(self, held: Callable[[dict], bool]) -> int:
        """Keep only the rows for which ``held(row)`` is true (the checkpoint holds that step); the file is
        replaced atomically. Returns the number of rows dropped."""
        rows = self.rows()
        kept = [r for r in rows if held(r)]
        if len(kept) < len(rows):
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(rows) - len(kept)


def check_output_dir(out: str | Path, inputs: Iterable[str | Path | None], marker: str | None = None,
                     overwrite: bool = False) -> Path:
    """Check an output folder before work: not a file, not one of ``inputs``, holding no link to a folder
    outside it, and, when it exists and is not empty, either holding ``marker`` (an earlier output of the
    same command, replaced) or ``overwrite``.

    Raises:
        ValueError: as above, naming the folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} is a file, not a folder")
    for src in inputs:
        if src is not None and Path(src).exists() and _same(out, Path(src)):
            raise ValueError(f"output folder {str(out)!r} is an input folder: its files would be overwritten; "
                             "choose another output folder")
    for p in out.iterdir() if out.is_dir() else ():
        if p.is_symlink() and p.is_dir() and not p.resolve().is_relative_to(out.resolve()):
            raise ValueError(f"output folder {str(out)!r} holds {p.name!r}, a link to the folder "
                             f"{str(p.resolve())!r}: outputs would be written there; remove the link")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not (marker and (out / marker).exists()):
        raise ValueError(f"output folder {str(out)!r} already holds files that are not dynprune's output"
                         f"{f' (no {marker})' if marker else ''}: choose an empty folder or pass --overwrite")
    return check_writable(out)


def check_output_file(out: str | Path, inputs: Iterable[str | Path | None], overwrite: bool = False) -> Path:
    """Check an output file before work: not a folder, not one of ``inputs``, replaced only with ``overwrite``.

    Raises:
        ValueError: as above, naming the file.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a folder; give a file name, e.g. {str(out / 'out.pt')!r}")
    for src in inputs:
        if src is not None and Path(src).exists() and out.exists() and _same(out, Path(src)):
            raise ValueError(f"output {str(out)!r} is an input of this command; choose another file name")
    if out.exists() and not overwrite:
        raise ValueError(f"output {str(out)!r} exists: pass --overwrite to replace it, or choose another name")
    check_writable(out.parent, "folder of the output")
    return out


def check_name_collisions(files: Sequence[Path], suffix: str = ".png") -> None:
    """Refuse inputs whose outputs (``stem + suffix``) would overwrite each other.

    Raises:
        ValueError: the colliding input names, grouped.
    """
    by_stem: dict[str, list[str]] = {}
    for f in files:
        by_stem.setdefault(Path(f).stem, []).append(Path(f).name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        raise ValueError("input images would overwrite each other's output: "
                         + "; ".join(f"{' and '.join(n)} -> {Path(n[0]).stem}{suffix}" for n in clashes)
                         + ". Rename them or restore them from separate folders")
