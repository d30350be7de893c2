"""Reading keypoint tables exactly: any common layout, encoding and delimiter, or a clear no.

Layouts (column names are case-insensitive):

* napari Points CSV: ``index, axis-0, axis-1[, ...]``; the two highest axes are
  ``(row, col)`` (so a 3-D layer's last two), other columns (``name``, ``label``, any
  property) are kept;
* a header naming ``row, col`` (or ``row, column``, or ``y, x``), any other columns kept;
* no header, two columns: ``row, col``;
* no header, three columns whose first is ``0, 1, 2, ...`` or ``1, 2, 3, ...``:
  ``index, row, col`` (napari's layout without its header line). Any other headerless
  table of three or more columns is ambiguous and refused, never guessed.

Text: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"), UTF-16/32 with a
mark, else Windows-1252 (Excel's plain "CSV" on Windows; it also reads Latin-1).
Delimiters: comma, semicolon (then a decimal comma is read as a decimal point), tab or
spaces. Lines starting with ``#`` are comments.

numpy and the standard library only.
"""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputImageError

__all__ = ["PointsTable", "read_points_csv", "read_points_table"]

_AXIS = re.compile(r"axis-(\d+)")
_PAIRS = (("row", "col"), ("row", "column"), ("y", "x"))
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_FIX = "save a napari Points layer as CSV, or write a header line with row,col columns"


@dataclass(frozen=True)
class PointsTable:
    """Keypoints read from a table, with every other column kept.

    Attributes
    ----------
    points : numpy.ndarray
        ``(P, 2)`` float64 ``(row, col)`` pixel positions, in file order; NaN rows only
        when read with ``allow_missing=True`` (a point not marked on this image).
    columns : dict of str to numpy.ndarray
        Every other column except ``index``, in file order, as text (``name``, ...).
    index : numpy.ndarray or None
        The file's ``index`` column (integers), if it has one.
    layout : str
        How the coordinates were found: ``"napari"``, ``"row,col"``, ``"y,x"``,
        ``"two columns"`` or ``"index,row,col"``.
    encoding : str
        The text encoding the file was read with.
    path : Path
    """

    points: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    index: np.ndarray | None = None
    layout: str = "row,col"
    encoding: str = "utf-8"
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.points)

    @property
    def names(self) -> np.ndarray | None:
        """The ``name`` (or ``label``) column, if the table has one."""
        for key in ("name", "label"):
            if key in self.columns:
                return self.columns[key]
        return None


def read_points_csv(path: str | Path) -> np.ndarray:
    """Read keypoints ``(P, 2)`` ``(row, col)`` in pixels from a CSV file.

    See `read_points_table` for the layouts accepted; this keeps only the positions.

    Raises
    ------
    InputImageError
        If the file is missing or holds no readable points.
    """
    return read_points_table(path).points


def read_points_table(path: str | Path, *, allow_missing: bool = False) -> PointsTable:
    """Read a keypoint table (layouts in the module docstring), keeping its columns.

    Parameters
    ----------
    path : str or Path
        The CSV (or TSV, or semicolon-separated) file.
    allow_missing : bool
        Accept rows whose coordinates are empty or NaN (a keypoint not marked on this
        image), giving NaN rows; otherwise such a row is an error naming its line.

    Returns
    -------
    PointsTable

    Raises
    ------
    InputImageError
        The file is missing, not text, empty, ambiguous, or a value is not a number;
        the message names the file, the line and the fix.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputImageError(f"points file {path} is a folder; pass a CSV file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputImageError(
            f"cannot read points file {path}: {error.strerror or error}"
        ) from None
    text, encoding = _decode(data, path)
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise InputImageError(f"points file {path} is empty; it needs row,col per point")
    delimiter = _delimiter(lines[0][1])
    rows = [(number, _cells(line, delimiter)) for number, line in lines]
    # a line of empty cells (",,") is a keypoint not marked on this image when missing
    # keypoints are allowed, and nothing otherwise
    rows = [(n, cells) for n, cells in rows if any(cells) or (allow_missing and len(cells) > 1)]
    decimal_comma = delimiter == ";"
    first = rows[0][1]
    if all(_is_number(c, decimal_comma) for c in first):
        return _headerless(rows, path, encoding, decimal_comma, allow_missing)
    return _with_header(rows, path, encoding, decimal_comma, allow_missing)


def _decode(data: bytes, path: Path) -> tuple[str, str]:
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as error:
                raise InputImageError(
                    f"points file {path} starts with a {name} byte-order mark but is not "
                    f"valid {name} ({error.reason} at byte {error.start}); save it as CSV UTF-8"
                ) from None
    if b"\x00" in data:
        raise InputImageError(
            f"points file {path} is not a text CSV file (it holds NUL bytes: binary, or "
            "UTF-16 without a byte-order mark); save it as CSV UTF-8"
        )
    for name in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        if re.search(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", text):
            raise InputImageError(
                f"points file {path} is not a text CSV file (it holds control characters); "
                "save it as CSV UTF-8"
            )
        return text, name
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _delimiter(line: str) -> str | None:
    for candidate in ("\t", ";", ","):  # a semicolon file may hold decimal commas
        if candidate in line:
            return candidate
    return None  # spaces


def _cells(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    cells = next(csv.reader([line], delimiter=delimiter))
    return [c.strip().strip("\ufeff") for c in cells]


def _number(cell: str, decimal_comma: bool) -> float:
    cell = cell.strip()
    if cell == "":
        return float("nan")
    if decimal_comma:
        cell = cell.replace(",", ".")
    return float(cell)


def _is_number(cell: str, decimal_comma: bool) -> bool:
    try:
        _number(cell, decimal_comma)
    except ValueError:
        return False
    return cell.strip() != ""


def _headerless(rows, path, encoding, decimal_comma, allow_missing) -> PointsTable:
    width = len(rows[0][1])
    if width == 2:
        columns, layout, index_column = (0, 1), "two columns", None
    elif width == 3 and _is_index(rows, decimal_comma):
        columns, layout, index_column = (1, 2), "index,row,col", 0
    else:
        raise InputImageError(
            f"points file {path} has {width} columns and no header line, so which are "
            f"(row, col) cannot be told; add a header line (e.g. index,row,col or "
            f"axis-0,axis-1) naming them"
        )
    points = _coordinates(rows, columns, path, decimal_comma, allow_missing)
    index = None
    if index_column is not None:
        index = np.array([int(float(c[index_column])) for _, c in rows], dtype=np.int64)
    return PointsTable(points, {}, index, layout, encoding, path)


def _is_index(rows, decimal_comma) -> bool:
    try:
        first = np.array([_number(c[0], decimal_comma) for _, c in rows])
    except (ValueError, IndexError):
        return False
    start = first[0] if len(first) else 0
    return start in (0, 1) and np.array_equal(first, start + np.arange(len(first)))


def _with_header(rows, path, encoding, decimal_comma, allow_missing) -> PointsTable:
    header = [c.strip().strip("\ufeff").strip('"').lower() for c in rows[0][1]]
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    if duplicated:
        raise InputImageError(
            f"points file {path} names column(s) {', '.join(duplicated)} twice in its header"
        )
    axes = sorted(
        (int(m.group(1)), k) for k, name in enumerate(header) if (m := _AXIS.fullmatch(name))
    )
    if len(axes) >= 2:
        columns, layout = (axes[-2][1], axes[-1][1]), "napari"
    else:
        found = next((pair for pair in _PAIRS if set(pair) <= set(header)), None)
        if found is None:
            shown = ",".join(rows[0][1])[:120]
            raise InputImageError(
                f"points file {path}: no axis-0,axis-1, row,col or y,x columns in its "
                f"header line {shown!r}; {_FIX}"
            )
        columns, layout = (header.index(found[0]), header.index(found[1])), ",".join(found)
        layout = "y,x" if found == ("y", "x") else "row,col"
    body = rows[1:]
    if not body:
        raise InputImageError(f"points file {path} has a header line but no points")
    points = _coordinates(body, columns, path, decimal_comma, allow_missing, width=len(header))
    index = None
    if "index" in header:
        position = header.index("index")
        try:
            index = np.array([int(float(c[position])) for _, c in body], dtype=np.int64)
        except (ValueError, IndexError):
            index = None
    extra = {
        name or f"column_{k}": np.array([c[k] if k < len(c) else "" for _, c in body], dtype=str)
        for k, name in enumerate(header)
        if k not in columns and name != "index"
    }
    return PointsTable(points, extra, index, layout, encoding, path)


def _coordinates(rows, columns, path, decimal_comma, allow_missing, width=None) -> np.ndarray:
    points = np.empty((len(rows), 2), dtype=np.float64)
    for k, (number, cells) in enumerate(rows):
        if width is not None and len(cells) > width:
            raise InputImageError(
                f"points file {path} line {number} has {len(cells)} values for {width} "
                "columns in the header"
            )
        for side, column in enumerate(columns):
            cell = cells[column] if column < len(cells) else ""
            try:
                value = _number(cell, decimal_comma)
            except ValueError:
                raise InputImageError(
                    f"cannot read points from {path}: line {number} has {cell!r} where a "
                    f"number is needed; {_FIX}"
                ) from None
            if np.isnan(value) and not allow_missing:
                raise InputImageError(
                    f"points file {path} line {number} has no {('row', 'col')[side]} value; "
                    "give every point both coordinates"
                )
            if np.isinf(value):
                raise InputImageError(f"points file {path} line {number} holds an infinite value")
            points[k, side] = value
    if allow_missing:
        points[np.isnan(points).any(axis=1)] = np.nan
    return points
