"""Result folders as transactions: a folder holds one whole run, or says it does not.

A run never writes into the result folder directly. `output_transaction` opens the
folder and gives the run a hidden staging folder inside it
(``.napari-corrseg-staging-<random>``); the run writes every file there, and
`OutputTransaction.commit` then

1. writes ``run.json`` with ``"status": "in progress"``, listing every file the new run
   brings and every file of the earlier run it will remove (the journal),
2. moves each new file into place (`os.replace`, atomic per file),
3. removes the earlier run's files that the new run did not write (they are listed in
   the earlier ``run.json``), and the folders they leave empty,
4. writes ``run.json`` with ``"status": "complete"`` and every file's size and SHA-256.

So whatever moment a run is killed at, the folder is the earlier complete run (killed
while staging: the hidden staging folder is cleaned up by the next run), visibly
incomplete (``run.json`` says "in progress"; steps 1-3 are renames and take
milliseconds), or the new complete run; `napari_corrseg.files.folder_check` tells
which. A folder the tool made is always reusable, complete or not; files in it that no
run listed (the user's own) are never removed. A run that fails before committing
leaves the folder as it was, and removes it again if the run created it.

Files and folders get the user's umask. numpy-free; the standard library only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import OutputError
from . import atomic

__all__ = [
    "RUN_FILE",
    "STATUS_COMPLETE",
    "STATUS_IN_PROGRESS",
    "CommitReport",
    "OutputTransaction",
    "output_transaction",
    "prepare_output_dir",
]

RUN_FILE = "run.json"
TOOL = "napari-corrseg"
STATUS_COMPLETE = "complete"
STATUS_IN_PROGRESS = "in progress"
_STAGING_PREFIX = ".napari-corrseg-staging-"
_LOCK_FILE = ".napari-corrseg.lock"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _visible_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder``, hidden entries skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                found.append(Path(root, name).relative_to(folder).as_posix())
    return found


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("tool") == TOOL else None


def _safe_relative(name: Any) -> str | None:
    """A listed path, if it stays inside the folder (never absolute, never ``..``)."""
    if not isinstance(name, str) or not name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.parts[0].startswith("."):
        return None
    return path.as_posix()


def _owned_files(folder: Path, record: Mapping[str, Any] | None) -> set[str]:
    """Files an earlier run's ``run.json`` says it wrote (or, in progress, will write or
    remove); for a ``run.json`` of an older version, every file under its ``outputs``."""
    if record is None:
        return set()
    listed: set[str] = set()
    for entry in record.get("files") or []:
        name = _safe_relative(entry.get("path") if isinstance(entry, dict) else entry)
        if name:
            listed.add(name)
    for name in record.get("removing") or []:
        if _safe_relative(name):
            listed.add(_safe_relative(name))
    if "files" not in record:  # written before run.json listed files
        for name in record.get("outputs") or []:
            name = _safe_relative(name)
            if name is None:
                continue
            if (folder / name).is_dir():
                listed.update(f"{name}/{inner}" for inner in _visible_files(folder / name))
            else:
                listed.add(name)
    return {name for name in listed if name != RUN_FILE}


@dataclass(frozen=True)
class CommitReport:
    """What a commit did, relative to the folder."""

    folder: Path
    files: tuple[str, ...]
    replaced: tuple[str, ...]
    removed: tuple[str, ...]
    reused: bool

    def summary(self) -> str:
        """One line for the user, naming the files of the earlier run it removed."""
        line = f"results in {self.folder}"
        if not self.reused:
            return line
        line += " (replacing earlier results"
        if self.removed:
            shown = ", ".join(self.removed[:5]) + (", ..." if len(self.removed) > 5 else "")
            line += f"; removed {len(self.removed)} file(s) of the earlier run: {shown}"
        return line + ")"


@dataclass
class OutputTransaction:
    """An open result folder; write into `staging` (or `path`), then `commit`."""

    folder: Path
    staging: Path
    reused: bool
    created: bool
    previous: dict[str, Any] | None
    report: CommitReport | None = None
    _lock: Any = field(default=None, repr=False)

    def path(self, relative: str | Path) -> Path:
        """Where to write the result file ``relative`` (its folders are created)."""
        name = _safe_relative(Path(relative).as_posix())
        if name is None or name == RUN_FILE:
            raise ValueError(f"{relative!r} is not a result file name inside the folder")
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self, record: Mapping[str, Any] | None = None) -> CommitReport:
        """Move the staged files into the folder and write ``run.json`` (see module doc).

        ``record`` is what ``run.json`` says about the run (command, settings, model,
        inputs); ``tool``, ``status``, ``files`` and ``completed`` are added.
        """
        if self.report is not None:
            return self.report
        new = [n for n in _visible_files(self.staging) if n != RUN_FILE]
        for name in new:
            clash = self.folder / name
            blockers = [clash] if clash.is_dir() and not clash.is_symlink() else []
            blockers += [p for p in clash.parents if _folder_contains(self.folder, p)]
            blockers = [p for p in blockers if p == clash or p.is_file()]
            if blockers:
                raise OutputError(
                    f"cannot write {clash}: {blockers[0]} is in the way; move it or choose "
                    "another --out"
                )
        entries = [
            {
                "path": name,
                "bytes": (self.staging / name).stat().st_size,
                "sha256": _sha256(self.staging / name),
            }
            for name in new
        ]
        owned = _owned_files(self.folder, self.previous)
        stale = sorted(n for n in owned - set(new) if (self.folder / n).is_file())
        replaced = tuple(n for n in new if (self.folder / n).exists())
        base = {**dict(record or {}), "tool": TOOL}
        journal = {**base, "status": STATUS_IN_PROGRESS, "files": entries, "removing": stale}
        atomic.write_json(self.folder / RUN_FILE, journal)
        for name in new:
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic._replace(self.staging / name, target)
        for name in stale:
            (self.folder / name).unlink(missing_ok=True)
            _remove_empty_parents(self.folder, self.folder / name)
        complete = {**base, "status": STATUS_COMPLETE, "completed": _now(), "files": entries}
        atomic.write_json(self.folder / RUN_FILE, complete)
        _fsync_folder(self.folder)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.report = CommitReport(self.folder, tuple(new), replaced, tuple(stale), self.reused)
        return self.report

    def abort(self) -> None:
        """Drop the staged files; the folder stays as it was (removed if we made it)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.created:
            with contextlib.suppress(OSError):
                (self.folder / _LOCK_FILE).unlink(missing_ok=True)
                self.folder.rmdir()  # only if nothing else appeared in it


def _folder_contains(folder: Path, path: Path) -> bool:
    """True when ``path`` lies strictly inside ``folder``."""
    return folder in path.parents


def _journal_written(folder: Path) -> bool:
    record = _read_record(folder)
    return record is not None and record.get("status") == STATUS_IN_PROGRESS


def _remove_empty_parents(folder: Path, removed: Path) -> None:
    parent = removed.parent
    while parent != folder and folder in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _lock(folder: Path) -> Any:
    """Hold an exclusive lock on the folder (POSIX); refuse a second writer."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, no check
        return None
    handle = open(folder / _LOCK_FILE, "a")  # held until the run ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(
            f"another napari-corrseg run is writing to {folder}; wait for it or choose "
            "another --out"
        ) from None
    return handle


def _open_folder(path: str | Path, overwrite: bool) -> tuple[Path, bool, bool, dict | None]:
    """Check and create the folder: (folder, reused, created, earlier run.json)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output {folder} exists and is not a folder; choose another --out")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create output folder {folder}: {error.strerror or error}"
        ) from None
    existing = [p for p in folder.iterdir() if not p.name.startswith(".")]
    previous = _read_record(folder)
    if existing and previous is None and not overwrite:
        raise OutputError(
            f"output folder {folder} is not empty and does not hold napari-corrseg results; "
            "choose another --out or pass --overwrite"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: permission denied")
    return folder, bool(existing), created, previous


@contextlib.contextmanager
def output_transaction(
    path: str | Path, *, overwrite: bool = False
) -> Iterator[OutputTransaction]:
    """Open a result folder for one run; write into ``transaction.staging``, then commit.

    Rules for the folder: a missing or empty one is created or used; one holding an
    earlier napari-corrseg run (complete or not) is reused, and the earlier run's files
    that this run does not write again are removed at commit; any other non-empty folder
    is refused unless ``overwrite`` is True (the user's files in it are then kept, and
    those with a result's name replaced). Leaving the block without `commit` (an error,
    Ctrl-C) drops the staged files and leaves the folder as it was.

    Examples
    --------
    >>> with output_transaction("results") as out:            # doctest: +SKIP
    ...     write_csv(out.path("pair_0_1/matches.csv"), header, rows)
    ...     report = out.commit({"command": "match", "settings": {...}})
    >>> print(report.summary())                               # doctest: +SKIP

    Raises
    ------
    OutputError
        The folder cannot be created or written, would overwrite another program's
        files, or another run is writing to it.
    """
    folder, reused, created, previous = _open_folder(path, overwrite)
    lock = _lock(folder)
    for leftover in folder.glob(_STAGING_PREFIX + "*"):  # from killed runs (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in folder.glob(f".*{atomic.PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    staging = folder / f"{_STAGING_PREFIX}{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as error:
        if lock is not None:
            lock.close()
        raise OutputError(f"cannot write to {folder}: {error.strerror or error}") from None
    transaction = OutputTransaction(folder, staging, reused, created, previous, _lock=lock)
    try:
        yield transaction
    except OSError as error:  # a full disk, a lost mount: the user's to fix, not a bug
        transaction.abort()
        state = (
            "is marked incomplete"
            if transaction.report is None and _journal_written(folder)
            else "was left as it was"
        )
        raise OutputError(
            f"cannot write results to {folder}: {error.strerror or error}; the folder {state}, "
            "free some space or choose another --out and run again"
        ) from None
    except BaseException:
        transaction.abort()
        raise
    else:
        if transaction.report is None:
            transaction.abort()
    finally:
        if lock is not None:
            lock.close()


def prepare_output_dir(path: str | Path, *, overwrite: bool = False) -> tuple[Path, bool]:
    """Create or check an output folder for writing in place (no transaction).

    Prefer `output_transaction`. Same folder rules; returns ``(folder, held files)``.

    Raises
    ------
    OutputError
        If the folder cannot be created or written, or would overwrite other files.
    """
    folder, reused, _, _ = _open_folder(path, overwrite)
    return folder, reused
