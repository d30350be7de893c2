"""Does a result folder hold one complete, unmodified run? (`check_output_folder`)

Reads the ``run.json`` that `napari_corrseg.files.output_folder` writes: a complete run
lists every file with its size and SHA-256, an interrupted one says "in progress".
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .output_folder import (
    RUN_FILE,
    STATUS_COMPLETE,
    STATUS_IN_PROGRESS,
    _read_record,
    _sha256,
    _visible_files,
)

__all__ = ["FolderCheck", "check_output_folder"]


@dataclass(frozen=True)
class FolderCheck:
    """What `check_output_folder` found.

    ``status``: ``"complete"`` (run.json lists exactly the files there, with matching
    SHA-256), ``"in progress"`` (a run was interrupted: the folder is incomplete),
    ``"modified"`` (run.json says complete but files differ; see ``problems``),
    ``"unverified"`` (run.json of an older version, which listed no checksums),
    ``"empty"`` or ``"not a result"``.
    """

    folder: Path
    status: str
    problems: tuple[str, ...] = ()
    record: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the folder holds one complete, unmodified run."""
        return self.status == STATUS_COMPLETE


def check_output_folder(path: str | Path, *, checksums: bool = True) -> FolderCheck:
    """Tell whether a result folder holds one complete run (see `FolderCheck`).

    Files the user added (anything not listed in ``run.json``) count as problems of a
    ``"modified"`` folder, as do missing or changed files.
    """
    folder = Path(path)
    record = _read_record(folder)
    visible = [n for n in _visible_files(folder) if n != RUN_FILE] if folder.is_dir() else []
    if record is None:
        if not visible and not (folder / RUN_FILE).exists():
            return FolderCheck(folder, "empty")
        return FolderCheck(folder, "not a result", ("no napari-corrseg run.json",))
    status = record.get("status")
    if status == STATUS_IN_PROGRESS:
        return FolderCheck(folder, STATUS_IN_PROGRESS, ("a run was interrupted",), record)
    if status != STATUS_COMPLETE or "files" not in record:
        return FolderCheck(folder, "unverified", ("run.json lists no checksums",), record)
    listed = {e.get("path"): e for e in record["files"] if isinstance(e, dict)}
    problems = [f"missing: {n}" for n in sorted(set(listed) - set(visible))]
    problems += [f"not listed in run.json: {n}" for n in sorted(set(visible) - set(listed))]
    if checksums:
        for name in sorted(set(listed) & set(visible)):
            if _sha256(folder / name) != listed[name].get("sha256"):
                problems.append(f"changed since the run: {name}")
    return FolderCheck(
        folder, STATUS_COMPLETE if not problems else "modified", tuple(problems), record
    )
