"""Write a generated table between two marker comments of a markdown file (``docs/reliability.md``'s figures)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def block_main(
    argv: list[str] | None, doc: str, table: Callable[[Path], str], begin: str, end: str, what: str
) -> int:
    """``python -m tests.<report> FOLDER [--write FILE]``: print the table, or replace the block of FILE with it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the RANKSEARCH_RELIABILITY_OUT folder")
    parser.add_argument("--write", type=Path, help=f"replace the {what} block of this markdown file")
    args = parser.parse_args(argv)
    text = table(args.folder)
    if args.write is None:
        print(text)
        return 0
    page = args.write.read_text()
    if begin not in page or end not in page:
        print(f"{args.write} has no {begin} ... {end} block", file=sys.stderr)
        return 1
    before, rest = page.split(begin, 1)
    after = rest.split(end, 1)[1]
    args.write.write_text(f"{before}{begin}\n{text}\n{end}{after}")
    print(f"wrote the {what} into {args.write}")
    return 0
