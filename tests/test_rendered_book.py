"""The built book as a reader sees it: every page opened offline in headless Chromium.

Reads the HTML in ``DDSS_HTML_DIR`` (default ``_build/jb/_build/html``; ``make test`` points it at
the smoke book it builds, ``make book`` runs this on the cpu book). Each page is opened from disk in
Debian's ``chromium`` under Selenium (``book/screenshots.py`` holds the browser helpers) with every
request that would leave the machine refused, so a page that needs the internet to render fails
here. The checks, per page:

* every chapter has at least one ``<table>`` and no Markdown table left as text (``|---|``);
* MathJax (served from the build) typeset every equation: no ``.math`` element without its
  ``mjx-container``, no MathJax error or undefined macro, and no ``\\[``, ``\\(``, ``$$`` or
  ``\\begin{`` left in the page's prose;
* every ``<img>`` loaded (``naturalWidth > 0``);
* no progress-bar text (tqdm's ``45%|████ | 45/100 [00:02<00:03, ...]``) and no absolute path of
  the build machine (``/tmp/...``, ``/root/...``, the checkout, ``site-packages``);
* the page fetched nothing from outside the machine;
* a chapter's launch buttons link to that chapter's notebook, and its download button to a file.

Without chromium, chromedriver or selenium the tests skip with how to install them, and so do they
without a built book; under ``CI=true`` either fails instead.
"""
import importlib.util
import os
import pathlib
import re
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML_DIR = pathlib.Path(os.environ.get("DDSS_HTML_DIR") or ROOT / "_build" / "jb" / "_build" / "html").resolve()
IN_CI = os.environ.get("CI", "").strip().lower() == "true"

_spec = importlib.util.spec_from_file_location("book_screenshots", ROOT / "book" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

TOC_PAGES = shots.toc_pages(ROOT)  # "book/intro", "book/01_setup", ...
CHAPTERS = [p for p in TOC_PAGES if (ROOT / (p + ".ipynb")).is_file()]
# Sphinx's own pages (index, genindex, search), opened too when the book is built.
OTHER_PAGES = sorted(
    str(f.relative_to(HTML_DIR).with_suffix("")) for f in HTML_DIR.rglob("*.html")
    if not f.relative_to(HTML_DIR).parts[0].startswith("_")
) if HTML_DIR.is_dir() else []
PAGES = TOC_PAGES + [p for p in OTHER_PAGES if p not in TOC_PAGES]

# A Markdown table's separator row left as text; Sphinx's smartquotes turn its '---' into '—'.
RAW_TABLE = re.compile(r"^\s*\|(?:\s*:?[-—–]+:?\s*\|)+\s*$")
RAW_MATH = re.compile(r"\\\[|\\\(|\\begin\{|\$\$|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")
PROGRESS = re.compile(
    r"\d{1,3}%\|[^|\n]*\|"            # 45%|████▌     |
    r"|\b\d+/\d+ \[\d+:\d\d"            # 45/100 [00:02
    r"|[█▉▊▋▌▍▎▏]{2,}"                  # the bar itself
    r"|\d(?:it/s|s/it)\]"               # 20.1it/s]
)
_PREFIXES = r"(?:tmp|root|home|Users|work|private|var/folders|opt|usr/(?:local/)?lib|builds|runner)"
ABS_PATH = re.compile(
    rf"(?<![\w.:/~-])/{_PREFIXES}/[^\s\"'<>]*"
    r"|[\w./-]*(?:site-packages|dist-packages)[\w./-]*"
    r"|\b[A-Za-z]:\\(?:Users|Windows)\\\S*"
)


def _machine_roots() -> list[str]:
    """The checkout and the built book's checkout (what holds its first ``_build``), as literal strings."""
    roots = {str(ROOT)}
    if "_build" in HTML_DIR.parts:
        roots.add(str(pathlib.Path(*HTML_DIR.parts[:HTML_DIR.parts.index("_build")])))
    return sorted(r for r in roots if len(r) > 1)


# Collected once per page, after the images and MathJax settle (book/screenshots.py's open_page).
_PROBE_JS = r"""
const texts = [], prose = [];
const walker = document.createTreeWalker(document.documentElement, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const p = n.parentElement;
  if (!p || p.closest('script, style, noscript, template, head')) continue;
  if (!n.data.trim()) continue;
  texts.push(n.data);
  if (!p.closest('pre, code, kbd, samp, textarea, mjx-container, mjx-assistive-mml, math, .math')) prose.push(n.data);
}
const main = document.querySelector('main') || document.body;
const maths = Array.from(document.querySelectorAll('.math'));
return {
  title: document.title,
  texts: texts,
  prose: prose,
  tables: main.querySelectorAll('table').length,
  math_total: maths.length,
  math_raw: maths.filter(m => !m.querySelector('mjx-container') && m.tagName.toLowerCase() !== 'mjx-container')
                 .map(m => m.textContent.trim().slice(0, 100)),
  math_errors: Array.from(document.querySelectorAll('mjx-merror'))
                    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 100))
                    .concat(Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
                            .map(e => 'undefined macro ' + e.textContent)),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                  width: i.naturalWidth})),
  launch: Array.from(document.querySelectorAll('.dropdown-launch-buttons a[href]')).map(a => a.getAttribute('href')),
  download_notebook: Array.from(document.querySelectorAll('a.btn-download-source-button[href], a.btn-download-notebook-button[href]'))
                          .map(a => a.getAttribute('href')),
  links: Array.from(document.querySelectorAll('[href], [src]'))
              .flatMap(e => [e.getAttribute('href'), e.getAttribute('src')]).filter(Boolean),
};
"""


def _unavailable(msg: str):
    """Skip with ``msg``, or fail under ``CI=true`` where the browser and the build must be there."""
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: a missing browser or build fails the test)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    if not HTML_DIR.is_dir():
        _unavailable(f"no built book at {HTML_DIR}: run `make test` or `make book` (or set DDSS_HTML_DIR)")
    try:
        shots.find_browser()
    except shots.BrowserMissing as e:
        _unavailable(str(e))
    with shots.launch(width=1300) as driver:
        yield driver


@pytest.fixture(scope="module")
def rendered(browser):
    """``rendered(page)``: what the browser shows of ``page`` (loaded once per module)."""
    cache = {}

    def get(page: str) -> dict:
        if page not in cache:
            path = HTML_DIR / (page + ".html")
            if not path.is_file():
                pytest.fail(f"{page} is in the book but {path} was not built", pytrace=False)
            settled = shots.open_page(browser, path)
            report = browser.execute_script(_PROBE_JS)
            report.update(settled=settled, path=path, requests=shots.requests_made(browser))
            cache[page] = report
        return cache[page]

    return get


def _lines(texts, pattern) -> list[str]:
    """The lines of ``texts`` in which ``pattern`` occurs, shortened for a message."""
    out = []
    for t in texts:
        for line in re.split(r"[\r\n]+", t):
            if pattern.search(line):
                out.append(line.strip()[:160])
    return out


def _show(items, n=8) -> str:
    items = list(items)
    more = f"\n  ... and {len(items) - n} more" if len(items) > n else ""
    return "".join(f"\n  {x!r}" for x in items[:n]) + more


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_tables_are_rendered(page, rendered):
    r = rendered(page)
    raw = _lines(r["texts"], RAW_TABLE)
    problems = []
    if raw:
        problems.append(f"{len(raw)} Markdown tables shown as text (|---| rows) instead of tables:{_show(raw)}")
    if r["tables"] < 1:
        problems.append("no <table> on the page")
    assert not problems, f"{page}: " + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_offline(page, rendered):
    r = rendered(page)
    settled = r["settled"]
    raw_text = _lines(r["prose"], RAW_MATH)
    problems = []
    if r["math_total"] and settled["mathjax"] != "typeset":
        problems.append(f"MathJax {settled['mathjax']} (script: {settled['src']})")
    if r["math_raw"]:
        problems.append(f"{len(r['math_raw'])} of {r['math_total']} equations not typeset:{_show(r['math_raw'])}")
    if r["math_errors"]:
        problems.append(f"{len(r['math_errors'])} MathJax errors (shown in red):{_show(r['math_errors'])}")
    if raw_text:
        problems.append(f"{len(raw_text)} lines with raw TeX outside the equations:{_show(raw_text)}")
    assert not problems, f"{page}: " + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_images_load(page, rendered):
    r = rendered(page)
    broken = [i["src"] for i in r["images"] if not i["complete"] or not i["width"]]
    assert not broken, f"{page}: {len(broken)} of {len(r['images'])} images did not load:{_show(broken)}"


@pytest.mark.parametrize("page", PAGES)
def test_no_progress_bars_or_machine_paths(page, rendered):
    r = rendered(page)
    bars = _lines(r["texts"], PROGRESS)
    roots = _machine_roots()
    paths = [line for line in _lines(r["texts"], re.compile(".+"))
             if ABS_PATH.search(line) or any(root in line for root in roots)]
    bad_links = [v for v in r["links"]
                 if v.startswith("file:") or re.match(rf"/{_PREFIXES}/", v) or any(root in v for root in roots)]
    problems = []
    if bars:
        problems.append(f"{len(bars)} progress-bar lines:{_show(bars)}")
    if paths:
        problems.append(f"{len(paths)} lines with an absolute path of the build machine:{_show(paths)}")
    if bad_links:
        problems.append(f"{len(bad_links)} links or sources into the build machine's disk:{_show(bad_links)}")
    assert not problems, f"{page}: " + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_page_is_self_contained(page, rendered):
    r = rendered(page)
    remote = sorted({q["url"] for q in r["requests"] if not shots.is_local(q["url"])})
    assert not remote, f"{page}: the page needs the network, it fetched {len(remote)} URLs:{_show(remote)}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_launch_buttons_point_at_the_chapter(page, rendered):
    r = rendered(page)
    notebook = page + ".ipynb"  # the path in the repository, e.g. book/01_setup.ipynb
    assert r["launch"], f"{page}: no launch buttons"

    def targets(href):
        u = urllib.parse.urlsplit(href)
        values = [v for vs in urllib.parse.parse_qs(u.query).values() for v in vs]
        return [urllib.parse.unquote(x) for x in [u.path, *values]]

    wrong = [h for h in r["launch"] if not any(t == notebook or t.endswith("/" + notebook) for t in targets(h))]
    assert not wrong, f"{page}: launch links that do not open {notebook}:{_show(wrong)}"
    assert r["download_notebook"], f"{page}: no download button for the notebook"
    for href in r["download_notebook"]:
        target = (r["path"].parent / urllib.parse.unquote(href.split("#")[0])).resolve()
        assert target.name == pathlib.Path(notebook).name and target.is_file(), (
            f"{page}: the download button links {href}, which is not the built {notebook}")
