"""README.md and docs/*.md speak of the product only: no machine paths, no work-item references, no link to a
file that does not exist."""
import glob
import os
import re

import pytest

from tests.conftest import ROOT

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/|/root/|/Users/|/tmp/|[A-Z]:\\\\)")
WORK_ITEM = re.compile(r"\bissues? ?#?\d+|(?<![\w&/])#\d{1,4}\b|\bsessions?\b", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def problems(path: str) -> list[str]:
    """'line N: what' for every machine path, work-item reference and link to a missing file of one page."""
    found = []
    folder = os.path.dirname(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for number, line in enumerate(lines, 1):
        for pattern, what in ((MACHINE_PATH, "machine path"), (WORK_ITEM, "work-item reference")):
            for match in pattern.finditer(line):
                found.append(f"line {number}: {what} '{match.group(0)}'")
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor of the same page
            if not os.path.exists(os.path.join(folder, target.split("#")[0])):
                found.append(f"line {number}: link to a missing file '{target}'")
    return found


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_page_has_no_machine_paths_work_items_or_dead_links(page):
    assert problems(page) == []


def test_the_checks_catch_each_kind(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("data in /work/shared/data\nas issue 18 said; see #18 and the previous session\n"
                    "[ok](there.md#part) [gone](missing.md) [web](https://example.org) [here](#top) colour #999999\n")
    found = problems(str(page))
    assert [f.split(":")[0] for f in found] == ["line 1", "line 2", "line 2", "line 2", "line 3"]
    assert "link to a missing file 'missing.md'" in found[-1]
