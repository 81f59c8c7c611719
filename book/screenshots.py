"""Full-page screenshots of the built book, taken offline in headless Chromium.

    python book/screenshots.py                          # _build/jb/_build/html -> _build/screenshots
    python book/screenshots.py HTML_DIR OUT_DIR --width 1300

Every page listed in ``_toc.yml`` is opened from disk (``file://``, as a reader without a server
opens it) in Debian's ``chromium``, driven by Selenium through Debian's ``chromium-driver``, and
written to ``OUT_DIR/<name>.png`` at ``--width`` pixels and the page's full height, after its
images have loaded and MathJax has typeset it. The browser refuses every request that would leave
the machine, so a page that needs the network to render shows it here.

Nothing is downloaded at run time: the browser and its driver come from the system
(``apt-get install chromium chromium-driver``) or from ``DDSS_CHROMIUM`` / ``DDSS_CHROMEDRIVER``;
without them the script says how to install them and exits 0 (1 under ``CI=true``). The browser
helpers (:func:`launch`, :func:`open_page`, :func:`requests_made`, :func:`toc_pages`) are shared
with ``tests/test_rendered_book.py``.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / "_build" / "jb" / "_build" / "html"

INSTALL_HINT = ("install the browser and its driver from Debian (as root: apt-get install -y chromium chromium-driver, "
                "which `make browser` runs) and selenium into the environment (it is in requirements.lock), "
                "or point DDSS_CHROMIUM and DDSS_CHROMEDRIVER at a Chromium and its matching chromedriver")

# Headless, no sandbox (CI runs as root), nothing in the background, and no network: every
# http(s) request goes to a proxy on a closed local port, every host name fails to resolve, and
# launch() blocks http(s) and ws(s) URLs through the DevTools protocol, so only file:// (and
# data:, blob:) can load. requests_made() reports what a page tried to fetch all the same.
OFFLINE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
    "--force-device-scale-factor=1", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-default-apps", "--disable-sync", "--disable-background-networking", "--disable-component-update",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-quic", "--mute-audio",
    "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
)
BLOCKED_URLS = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")

# Waits (asynchronously, in the page) for every image to load or fail and for MathJax to finish
# its first typesetting; answers with what it found of MathJax.
_SETTLE_JS = r"""
const done = arguments[arguments.length - 1];
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const t0 = Date.now();
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === 'lazy') img.loading = 'eager';
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r, {once: true});
    img.addEventListener('error', r, {once: true});
    setTimeout(r, 10000);
  })));
  const mjScript = document.querySelector('script[src*="mathjax" i]');
  const hasMath = document.querySelector('.math, mjx-container') !== null;
  const ready = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  if (!hasMath && !mjScript) return done({mathjax: 'no math', src: null});
  while (!ready() && Date.now() - t0 < 3000) await sleep(50);
  if (!ready()) return done({mathjax: 'not loaded', src: mjScript ? mjScript.src : null});
  const ok = await Promise.race([MathJax.startup.promise.then(() => true, () => false), sleep(20000).then(() => false)]);
  done({mathjax: ok ? 'typeset' : 'typesetting failed or timed out', src: mjScript ? mjScript.src : null,
        version: MathJax.version || null});
})().catch(e => done({mathjax: 'error: ' + e, src: null}));
"""


class BrowserMissing(RuntimeError):
    """Chromium, chromedriver or selenium is not installed; the message says how to install them."""


def toc_pages(root: pathlib.Path = ROOT) -> list[str]:
    """Every page of ``_toc.yml`` (the root and the chapters, markdown or notebook), in order, without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]


def find_browser() -> tuple[str, str]:
    """Paths of the Chromium executable and of its chromedriver; :class:`BrowserMissing` if either is absent."""
    chrome = os.environ.get("DDSS_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("DDSS_CHROMEDRIVER") or shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.isfile(p)), None)
    missing = [name for name, path in (("chromium", chrome), ("chromedriver", driver))
               if not path or not os.path.isfile(path)]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        raise BrowserMissing(f"selenium is not importable ({e}): {INSTALL_HINT}") from None
    return chrome, driver


@contextlib.contextmanager
def launch(width: int = 1300, height: int = 900):
    """A headless, offline Chromium under Selenium, ``width`` x ``height`` CSS pixels; closed on exit."""
    chrome, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="ddss-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for flag in OFFLINE_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_argument(f"--user-data-dir={profile}")
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=driver_path, log_output=subprocess.DEVNULL),
                                  options=opts)
        try:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_URLS})
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.set_script_timeout(60)
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


def open_page(driver, page: pathlib.Path) -> dict:
    """Load ``page`` from disk, wait for its images and MathJax; returns ``{"mathjax": state, "src": url}``."""
    requests_made(driver)  # drop what earlier pages logged
    uri = page.resolve().as_uri()
    driver.get(uri)
    if 'http-equiv="refresh"' in page.read_text(errors="replace").lower():  # a redirect (index.html): follow it
        deadline = time.monotonic() + 10
        while driver.current_url == uri and time.monotonic() < deadline:
            time.sleep(0.05)
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)
    return driver.execute_async_script(_SETTLE_JS)


def requests_made(driver) -> list[dict]:
    """The requests the browser sent since the last call: ``{"url", "failed"}`` (failed: the error text or None)."""
    sent, failed = {}, {}
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg.get("method") == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif msg.get("method") == "Network.loadingFailed":
            failed[params["requestId"]] = params.get("blockedReason") or params.get("errorText") or "failed"
    return [{"url": url, "failed": failed.get(rid)} for rid, url in sent.items()]


def is_local(url: str) -> bool:
    """Whether loading ``url`` stays on this machine (a file, inline data, or the loopback address)."""
    if url.startswith(LOCAL_SCHEMES):
        return True
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return host.split(":")[0] in ("127.0.0.1", "localhost") or host.startswith("[::1]")


def screenshot(driver, out: pathlib.Path, width: int, max_height: int = 30000) -> tuple[int, int]:
    """Write a full-page PNG of the current page at ``width`` CSS pixels; returns its (width, height)."""
    height = int(driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0)"))
    height = max(1, min(height, max_height))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.execute_async_script("const d = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(d));")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "fromSurface": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    finally:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return width, height


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", nargs="?", default=str(HTML_DIR), help="the built HTML (default: %(default)s)")
    ap.add_argument("out_dir", nargs="?", default=str(ROOT / "_build" / "screenshots"),
                    help="where the PNGs go (default: %(default)s)")
    ap.add_argument("--width", type=int, default=1300, help="page width in CSS pixels (default: %(default)s)")
    args = ap.parse_args(argv)
    html_dir, out_dir = pathlib.Path(args.html_dir), pathlib.Path(args.out_dir)
    pages = [(pathlib.Path(p).name, html_dir / (p + ".html")) for p in toc_pages()]
    absent = [str(f) for _, f in pages if not f.is_file()]
    if absent:
        print(f"not built: {', '.join(absent)} (run `make book` first)", file=sys.stderr)
        return 1
    try:
        find_browser()
    except BrowserMissing as e:  # like the test: a skip on a developer's machine, a failure under CI=true
        print(f"no screenshots: {e}", file=sys.stderr)
        return 1 if os.environ.get("CI", "").strip().lower() == "true" else 0
    t0 = time.perf_counter()
    with launch(width=args.width) as driver:
        for name, page in pages:
            state = open_page(driver, page)
            w, h = screenshot(driver, out_dir / f"{name}.png", args.width)
            print(f"{out_dir / (name + '.png')}: {w}x{h} (math: {state['mathjax']})", flush=True)
    print(f"{len(pages)} screenshots in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
