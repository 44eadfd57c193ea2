"""Every reference to documentation resolves: markdown links, ``docs/...`` paths and ``*.md`` names in code, the
README and the docs, and the sections they name (``docs/methods.md, DRA-style``).

The method and data specifications live in ``docs/``; a reference to a file that is not in the repository (an
internal specification that only the developers have) is a dead end for a user.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".json", ".toml", ".sh", ".txt", ".ipynb", ".cfg")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / f for f in out.splitlines() if f.endswith(TEXT) or "/" not in f and f.startswith(".ci")]
    # the changelog is history: it may name files that were renamed since
    return [f for f in files if f.is_file() and f.name != "CHANGELOG.md"]


FILES = tracked()
MARKDOWN = [f for f in FILES if f.suffix == ".md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w-]+\.md)(#[\w-]+)?")
# "docs/methods.md, DRA-style step 2": a section title (capitalised) after the comma; lower case is prose
SECTION = re.compile(r"\bdocs/(\w+\.md), ([A-Z][^\n()\[\];:,.\"'`]*)")
# written when a command runs, not shipped: benchmark outputs (python -m bench), a test's scratch report
GENERATED = ("docs/search", "docs/oneshot", "bench.md")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def headings(md: Path) -> list[str]:
    lines = md.read_text(encoding="utf-8").splitlines()
    return [ln.lstrip("#").strip() for ln in lines if re.match(r"#{1,6} ", ln)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_files_are_found():
    assert ROOT / "README.md" in MARKDOWN and ROOT / "docs" / "methods.md" in MARKDOWN
    assert any(f.suffix == ".py" for f in FILES)


@pytest.mark.parametrize("md", MARKDOWN, ids=rel)
def test_markdown_links_resolve(md):
    """Relative links (and images) point at files that exist, and an ``#anchor`` at a heading of its file."""
    bad = []
    for target in LINK.findall(md.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
            bad.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not bad, f"{rel(md)}: " + "; ".join(bad)


def _resolves(name: str, where: Path) -> bool:
    candidates = [ROOT / name, where.parent / name]
    if "/" not in name:
        candidates.append(ROOT / "docs" / name)
    return any(c.is_file() for c in candidates)


def test_every_named_markdown_file_and_docs_path_exists():
    """``docs/...`` paths and ``*.md`` names anywhere in code or docs exist (outside URLs)."""
    bad = []
    for f in FILES:
        text = f.read_text(encoding="utf-8", errors="replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            line = re.sub(r"[a-z]+://\S+", "", line)  # a URL names another site's files
            names = [m.group(1) for m in MD_NAME.finditer(line)]
            # a path with a placeholder (docs/report-<section>.png) names a family of files, not one
            names += re.findall(r"(?<![\w/.-])(docs/[\w./-]*\w)(?![\w<{*-])", line)
            for name in names:
                if not name.startswith(GENERATED) and not _resolves(name, f):
                    bad.append(f"{rel(f)}:{line_no}: {name}")
    assert not bad, "references to files that are not in the repository:\n" + "\n".join(bad)


def test_named_sections_exist():
    """``docs/methods.md, DRA-style step 2`` names a section: the file has a heading that starts with it."""
    bad, seen = [], 0
    for f in FILES:
        for doc, names in SECTION.findall(f.read_text(encoding="utf-8", errors="replace")):
            titles = [h.lower() for h in headings(ROOT / "docs" / doc)]
            for name in names.split(" and "):
                name = re.sub(r" step \d+$", "", name.strip()).lower()
                seen += 1
                if not any(t.startswith(name) for t in titles):
                    bad.append(f"{rel(f)}: docs/{doc}, {name!r}")
    assert seen >= 10  # the pattern does find the references
    assert not bad, "sections that do not exist:\n" + "\n".join(bad)
