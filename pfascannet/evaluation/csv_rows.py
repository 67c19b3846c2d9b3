"""Reading the evaluation CSVs so that they cannot be misread.

Every CSV the evaluation reads (lesion CSVs, slide scores, references, stage
CSVs) goes through ``read_rows``: a file that is not UTF-8 text, holds a NUL
byte or breaks the CSV quoting is one error naming the file and line, never a
traceback and never "a header" that silently swallows a line.  ``is_header``
is the one rule for an optional header: only the first line of a file, only
when it has the expected number of fields, each a name (letters first) and
none a number.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from typing import Optional, Sequence

from pfascannet.errors import PfaError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .()/%#-]*$")


def read_rows(path: str | os.PathLike, error: type[Exception] = PfaError) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file with their 1-based line numbers.

    Raises:
      FileNotFoundError: no such file (its message names the path).
      error: a folder instead of a file, bytes that are not UTF-8 text, a NUL
        byte, or broken CSV quoting; the message names the file and line.
    """
    if os.path.isdir(path):
        raise error(f"{path}: a folder, not a CSV file")
    with open(path, "rb") as f:
        data = f.read()
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data[:nul].count(b"\n") + 1
        raise error(f"{path}:{line}: holds a NUL byte; not a text CSV file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; not a CSV file") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    out = []
    try:
        start = 1
        for row in reader:
            if row and any(c.strip() for c in row):
                out.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise error(f"{path}:{reader.line_num}: not a CSV line ({exc})") from None
    return out


def is_number(text: str) -> bool:
    """Whether ``float()`` reads ``text`` (``nan`` and ``inf`` count as numbers)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_header(row: Sequence[str], n_fields: int) -> bool:
    """Whether ``row`` can be a header of ``n_fields`` named columns: names, none a number."""
    fields = [c.strip() for c in row]
    return len(fields) == n_fields and all(_NAME.match(c) and not is_number(c) for c in fields)


def finite(text: str) -> Optional[float]:
    """``float(text)`` when it is a finite number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def show(row: Sequence[str], limit: int = 60) -> str:
    """A row as the user wrote it, shortened for an error line."""
    text = ",".join(row)
    return repr(text if len(text) <= limit else text[:limit] + "...")
