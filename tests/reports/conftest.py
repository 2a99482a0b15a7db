"""The rendered pages in a real browser (Playwright driving the system Chromium, never its own download).

`site` grades bundled data-prep solutions (the good one, two flawed) with `tunegrade batch` and reviews
one with `tunegrade review`; `assert_page_ok(page, artifact)` loads one page from file:// and fails on a console or page error, on
any request that leaves the file, or on a link that points nowhere, after a full-page screenshot under
$TUNEGRADE_TEST_ARTIFACTS (default: pytest's temporary folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import pytest

from grader.cli import main

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ARTIFACTS_ENV = "TUNEGRADE_TEST_ARTIFACTS"
REQUIRE_BROWSER = "TUNEGRADE_REQUIRE_BROWSER"
# Links that leave the report are allowed (a reader may follow them) but never fetched while it loads.
UNCHECKED_SCHEMES = ("http", "https", "mailto")
# Candidate: data-prep solution. Best first, the cohort lists zoe, adam, mia: not alphabetical, so
# sorting by name must move rows.
COHORT = {"zoe": "good", "adam": "flawed-leakage", "mia": "flawed-no-pii"}


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Browser]:
    """One Chromium for the session, launched from the system's binary: Playwright downloads nothing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get(REQUIRE_BROWSER):
            pytest.fail(f"{REQUIRE_BROWSER} is set but playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pages of a real `tunegrade batch` over bundled data-prep solutions (a candidate report each, the
    cohort page, a side-by-side page per flagged pair: the flawed solutions are near-copies of the good
    one) and a promotion review of one of them."""
    work = tmp_path_factory.mktemp("site")
    for candidate, solution in COHORT.items():
        assert main(["solutions", "data-prep", solution, str(work / "subs" / candidate)]) == 0
    pages = work / "pages"
    # Bundled, trusted code: graded even where bubblewrap cannot isolate it.
    assert main(["batch", str(work / "subs"), "--task", "data-prep", "--out", str(pages), "--quiet",
                 "--allow-reduced-isolation"]) == 0
    assert main(["review", "--person", "zoe", "--role", "data-scientist", str(pages / "zoe"),
                 "--out", str(pages / "review")]) == 0
    return pages


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get(ARTIFACTS_ENV)
    folder = Path(configured) if configured else tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _ids_in(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


def broken_links(page_path: Path, links: list[dict[str, object]]) -> list[str]:
    """What is wrong with each link (as _LINKS_JS lists them): an anchor no element on the page carries,
    a file that is missing, an anchor the linked page lacks, a scheme that goes nowhere offline."""
    problems = []
    for link in links:
        raw, parts = str(link["raw"]), urlsplit(str(link["url"]))
        anchor = unquote(parts.fragment)
        if link["same"]:
            if not link["anchored"]:
                problems.append(f"link {raw!r}: no element with id {anchor!r} on the page")
        elif parts.scheme == "file":
            target = Path(url2pathname(parts.path))
            if not target.is_file():
                problems.append(f"link {raw!r}: {target} does not exist")
            elif anchor and target.suffix == ".html" and anchor not in _ids_in(target):
                problems.append(f"link {raw!r}: no element with id {anchor!r} in {target.name}")
        elif parts.scheme not in UNCHECKED_SCHEMES:
            problems.append(f"link {raw!r}: a {parts.scheme}: link goes nowhere in a saved report")
    return problems


@contextmanager
def opened(browser: Browser, page_path: Path) -> Iterator[tuple[Page, list[str]]]:
    """The page loaded from file://, and the problems seen so far: console and page errors, requests for
    anything but the page itself and data: URLs (aborted, so nothing is fetched)."""
    own = page_path.resolve().as_uri()
    problems: list[str] = []

    def allowed(url: str) -> bool:
        return url.split("#")[0] == own or url.startswith("data:")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console error: {msg.text}"))
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("request", lambda req: allowed(req.url) or problems.append(f"request leaves the page: {req.url}"))
    page.route("**/*", lambda route: route.continue_() if allowed(route.request.url) else route.abort())
    try:
        page.goto(own, wait_until="load")
        yield page, problems
    finally:
        context.close()


# Every a[href]: as written, as resolved, whether it stays on this page and then whether its anchor exists.
_LINKS_JS = """() => [...document.querySelectorAll('a[href]')].map(a => {
  const here = location.href.split('#')[0], url = new URL(a.href, here), id = decodeURIComponent(url.hash.slice(1));
  return {raw: a.getAttribute('href'), url: url.href, same: url.href.split('#')[0] === here,
          anchored: id === '' || document.getElementById(id) !== null};
})"""


@pytest.fixture
def open_page(browser: Browser) -> Callable[[Path], AbstractContextManager[tuple[Page, list[str]]]]:
    """`with open_page(path) as (page, problems):` for tests that interact with a page."""
    return lambda page_path: opened(browser, page_path)


@pytest.fixture
def assert_page_ok(browser: Browser, artifacts: Path) -> Callable[[Path, str], None]:
    """Load a page, screenshot it as <artifact>.png, and fail on what a reader or an auditor would trip on."""

    def check(page_path: Path, artifact_name: str) -> None:
        with opened(browser, page_path) as (page, problems):
            page.screenshot(path=str(artifacts / f"{artifact_name}.png"), full_page=True)
            problems += broken_links(page_path, page.evaluate(_LINKS_JS))
        assert not problems, f"{page_path}:\n  " + "\n  ".join(problems)

    return check
