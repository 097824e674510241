"""Result tables: the Markdown and CSV text of a table and their atomic writing (benchmark scripts)."""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Optional, Sequence

from utils.io import atomic_write


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule and one line per row (cells as given, str()-ed)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends) of ``header`` and ``rows``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def number(value: Optional[float]) -> str:
    """A float's exact text for a CSV cell (``repr``); empty for None."""
    return "" if value is None else repr(value)


def write_tables(stem: str, markdown_lines: list[str], csv: Optional[str] = None) -> dict[str, str]:
    """Write ``<stem>.md`` (the lines, newline-terminated) and, given, ``<stem>.csv``, each atomically; returns
    ``{"markdown": path, "csv": path, "png": <stem>.png}`` (the PNG is the caller's plot, written after)."""
    paths = {"markdown": stem + ".md"}
    text = "\n".join(markdown_lines) + "\n"
    atomic_write(paths["markdown"], lambda fh: fh.write(text))
    if csv is not None:
        paths["csv"] = stem + ".csv"
        atomic_write(paths["csv"], lambda fh: fh.write(csv))
    paths["png"] = stem + ".png"
    return paths
