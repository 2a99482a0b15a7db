"""Every page type in Chromium: no errors, nothing fetched, no dead links, a screenshot each; and the
cohort table sorts by the column whose header is clicked, then reverses on a second click.

Sortable columns are header cells holding a <button>; a cell sorts by its data-v attribute when it has
one, else by its text: numbers as numbers, empty values last in either direction.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from grader.constants import COHORT_FILE

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.browser

# Page type: (its pages under the rendered site, whether the site must hold one). The review and
# similar-code pages count once the `site` fixture renders them.
PAGE_TYPES = {
    "report": ("*/report.html", True),
    "index": ("index.html", True),
    "review": ("**/review.html", True),
    "similar": ("**/similar-*.html", True),
}

# The data rows of the header's table: each row's text, and its sort key in the header's column.
_COLUMN_JS = """th => [...th.closest('table').rows].filter(tr => tr.querySelector('td')).map(tr => {
  const cell = tr.cells[th.cellIndex];
  return {row: tr.innerText, key: cell ? (cell.dataset.v ?? cell.innerText).trim() : ''};
})"""


def artifact_name(page_type: str, page: Path, site: Path, several: bool) -> str:
    """<page-type>, or with several pages of a type <page-type>-<what tells them apart>."""
    if not several:
        return page_type
    rel = page.relative_to(site)
    parts = [*rel.parent.parts, rel.stem.removeprefix(page_type).strip("-")]
    return "-".join([page_type, *filter(None, parts)])


@pytest.mark.parametrize("page_type", PAGE_TYPES)
def test_page_ok(page_type: str, site: Path, assert_page_ok: Callable[[Path, str], None]) -> None:
    pattern, required = PAGE_TYPES[page_type]
    pages = sorted(site.glob(pattern))
    if not pages:
        assert not required, f"no {pattern} under {site}"
        pytest.skip(f"the rendered site holds no {pattern}: the `site` fixture does not render {page_type} pages")
    for page in pages:
        assert_page_ok(page, artifact_name(page_type, page, site, len(pages) > 1))


def _keys(column: list[dict[str, str]]) -> list[Any]:
    """The column's sort keys, empty values as None."""
    texts = [c["key"] or None for c in column]
    try:
        return [t if t is None else float(t.replace(",", "")) for t in texts]
    except ValueError:
        return [t if t is None else t.casefold() for t in texts]


def _direction(keys: list[Any]) -> int | None:
    """1 ascending, -1 descending, 0 all equal, None not sorted (or an empty value before a value)."""
    present = [k for k in keys if k is not None]
    if keys[:len(present)] != present:
        return None
    pairs = list(pairwise(present))
    if all(a == b for a, b in pairs):
        return 0
    if all(a <= b for a, b in pairs):
        return 1
    if all(a >= b for a, b in pairs):
        return -1
    return None


def _column(th: Locator) -> list[dict[str, str]]:
    return th.evaluate(_COLUMN_JS)


def test_cohort_sorts_by_clicked_column(
        site: Path, open_page: Callable[[Path], AbstractContextManager[tuple[Page, list[str]]]]) -> None:
    with open_page(site / COHORT_FILE) as (page, problems):
        headers = page.locator("th:has(button)")
        assert headers.count(), "the cohort page has no sortable column (a th holding a button)"
        moved = False
        for i in range(headers.count()):
            th = headers.nth(i)
            name, before = th.inner_text().strip(), _column(th)
            th.locator("button").click()
            first = _column(th)
            once = _direction(_keys(first))
            assert once is not None, f"{name}: not sorted after a click: {[c['key'] for c in first]}"
            th.locator("button").click()
            second = _column(th)
            assert _direction(_keys(second)) == -once, f"{name}: not reversed: {[c['key'] for c in second]}"
            if None not in _keys(first) and len(set(_keys(first))) == len(first):
                assert [c["row"] for c in second] == [c["row"] for c in reversed(first)], name
            moved |= [c["row"] for c in first] != [c["row"] for c in before]
        assert moved, "no click on a sortable column moved a row"
    assert not problems, problems
