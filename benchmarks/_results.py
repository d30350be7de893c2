"""Writing a benchmark's results file (shared by the scripts in this folder)."""

from __future__ import annotations

from pathlib import Path

NOTES_HEADING = "\n## Notes"


def write_keeping_notes(path: Path, body: str) -> None:
    """Write ``body`` to ``path``, keeping the hand-written notes of the file there.

    The notes are everything from a ``## Notes`` heading on; they follow the new body
    after a blank line.
    """
    notes = ""
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if NOTES_HEADING in old:
            notes = old[old.index(NOTES_HEADING) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body.rstrip("\n") + "\n" + notes, encoding="utf-8")
