"""``python -m app.export_mammoth --to DIR [--methods a,b]``: write this project's methods into a Mammoth checkout
as Mammoth-native model files (the flagship replaces Mammoth's ``models/second_order.py``)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from app.mammoth_export import METHODS, ExportError, export


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.export_mammoth", description=__doc__)
    parser.add_argument("--to", required=True, help="root of a Mammoth checkout")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods to export (default: all: {','.join(METHODS)})")
    args = parser.parse_args(argv)
    try:
        written = export(args.to, [m for m in args.methods.split(",") if m])
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for rel in written:
        print(rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
