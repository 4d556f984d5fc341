"""Where dynprune writes: run folders and output paths that never overwrite a user's files unasked.

- A run folder (``train``, ``search``) that holds another run's files needs ``resume`` (continue it) or
  ``overwrite`` (its run files are deleted first; nothing else in the folder is touched).
- An output folder or file is never an input of the same command, never a file where a folder is
  wanted (or the reverse), and an existing output file is replaced only when asked.
- Inputs whose outputs would share a name (``a.png`` and ``a.jpg`` both give ``a.png``) are refused.

Every check runs before any long work starts; each raises ``ValueError`` naming the paths. A run's
JSON-lines log (:class:`RunLog`) is rewound to its checkpoint when the run resumes.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = ["claim_run_dir", "checkpoint_note", "check_output_dir", "check_output_file", "check_name_collisions", "RunLog"]


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def claim_run_dir(out: str | Path, patterns: Sequence[str], resume: bool, overwrite: bool,
                  what: str = "run") -> Path:
    """Make ``out`` ready for a run whose files match the glob ``patterns`` (e.g. ``last.pt``).

    Returns:
        ``out`` (created).
    Raises:
        ValueError: ``out`` is a file; both ``resume`` and ``overwrite``; or it holds run files and
        neither was given (the files are named).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} folder {str(out)!r} is a file")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or replace it")
    found = sorted(p for p in (out.iterdir() if out.is_dir() else ())
                   if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))
    if found and not resume:
        if not overwrite:
            raise ValueError(f"{what} folder {str(out)!r} already holds a {what} ({', '.join(p.name for p in found)}): "
                             "pass --resume to continue it, --overwrite to replace it, or choose another out_dir")
        for p in found:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


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
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        return len(rows) - len(kept)


def check_output_dir(out: str | Path, inputs: Iterable[str | Path | None], marker: str | None = None,
                     overwrite: bool = False) -> Path:
    """Check an output folder before work: not a file, not one of ``inputs``, and, when it exists and is
    not empty, either holding ``marker`` (an earlier output of the same command, replaced) or ``overwrite``.

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
    if out.is_dir() and any(out.iterdir()) and not overwrite and not (marker and (out / marker).exists()):
        raise ValueError(f"output folder {str(out)!r} already holds files that are not dynprune's output"
                         f"{f' (no {marker})' if marker else ''}: choose an empty folder or pass --overwrite")
    return out


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
