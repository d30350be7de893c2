"""Content fingerprints of large files (model weights), hashed once and remembered.

A model's identity, and so every cache key, must change when its weights change, also
when a file is rewritten in place with the same size and modification time. So weights
are identified by the SHA-256 of their bytes. Hashing 5 GB takes seconds, so a digest is
remembered, in this process and in ``<cache dir>/fingerprints.json``, under the file's
``(path, size, mtime, ctime, inode, device)``: any write to the file changes its ctime
(which, unlike the mtime, no program can set back), so a remembered digest is only
reused for the very same bytes.

`remember_on_disk` turns the disk memo off (the command line's ``--no-cache`` touches no
cache); the in-process memo always works. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MEMO_FILE", "file_digest", "folder_digest", "remember_on_disk"]

MEMO_FILE = "fingerprints.json"
_memory: dict[str, tuple[list[int], str]] = {}
_lock = threading.Lock()
_state = {"disk": True}


@contextlib.contextmanager
def remember_on_disk(enabled: bool) -> Iterator[None]:
    """Within the block, read and write the disk memo only if ``enabled``."""
    with _lock:
        previous, _state["disk"] = _state["disk"], bool(enabled)
    try:
        yield
    finally:
        with _lock:
            _state["disk"] = previous


def _memo_path() -> Path:
    from .cache import default_cache_dir

    return default_cache_dir() / MEMO_FILE


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _load_memo() -> dict:
    try:
        memo = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _save_memo(name: str, stamp: list[int], digest: str) -> None:
    from .atomic import write_json

    memo = _load_memo()
    memo[name] = {"stamp": stamp, "sha256": digest}
    with contextlib.suppress(OSError):
        _memo_path().parent.mkdir(parents=True, exist_ok=True)
        write_json(_memo_path(), memo)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, computed once per version of the file (see module)."""
    path = Path(path)
    name = str(path.resolve())
    stamp = _stamp(path)
    with _lock:
        known = _memory.get(name)
        disk = _state["disk"]
    if known is not None and known[0] == stamp:
        return known[1]
    if disk:
        entry = _load_memo().get(name)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            with _lock:
                _memory[name] = (stamp, str(entry["sha256"]))
            return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    value = digest.hexdigest()
    if _stamp(path) == stamp:  # not rewritten while we read it
        with _lock:
            _memory[name] = (stamp, value)
        if disk:
            _save_memo(name, stamp, value)
    return value


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a folder: relative paths and content digests."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file_name in sorted(files):
            if file_name.startswith("."):
                continue
            file = Path(root, file_name)
            if not file.is_file():
                continue
            digest.update(f"{file.relative_to(folder).as_posix()}\0".encode())
            digest.update(file_digest(file).encode())
    return digest.hexdigest()
