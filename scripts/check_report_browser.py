#!/usr/bin/env python3
"""Open an se-nas report in headless Chromium, as a reader would, and check what it shows.

At a 1400 px wide window it checks that

- the page renders: a full-page screenshot is written (PNG, 1400 px wide; look at it);
- nothing is wider than the window: no horizontal scrollbar
  (``document.documentElement.scrollWidth <= clientWidth``); otherwise the widest elements are named;
- no table is cut off: no table's scrolling box is narrower than the table (its heading is named);
- the page is self-contained: Chromium requests nothing but the page itself (the figures are
  inlined ``data:`` URLs), and no script error is thrown;
- the trial table sorts when a column header is clicked.

It talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, one JSON message per NUL byte), so it needs only the standard library.

Make a report from a small real study, then check it::

    se-nas search --space tiny --recipe tiny --budget-gflops 1.815 --n-trials 6 --study demo --root /tmp/x
    se-nas compare demo --root /tmp/x --out /tmp/r --seeds 2
    se-nas report demo --root /tmp/x --out /tmp/r
    python scripts/check_report_browser.py /tmp/r/demo/report.html --screenshot /tmp/r/demo.png

Exit status: 0 when every check passes, 1 with one line per failed check, 2 when the page or
Chromium cannot be used at all.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
WIDTH, HEIGHT = 1400, 900

# The widths the reader sees, and the elements that stick out past the window (the element itself,
# or its content spilling out of it, like a long line in a <pre>).
MEASURE = """(() => {
  const de = document.documentElement, cw = de.clientWidth;
  const right = el => { const r = el.getBoundingClientRect();
    return getComputedStyle(el).overflowX === 'visible' ? Math.max(r.right, r.left + el.scrollWidth) : r.right; };
  const wide = Array.from(document.body.querySelectorAll('*')).filter(el => right(el) > cw + 0.5)
    .map(el => el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' (' + Math.round(right(el)) + ' px)');
  // a table in a scrolling box that is wider than the box: its right-hand columns are cut off until
  // the reader scrolls sideways (the section's heading names it)
  const clipped = Array.from(document.querySelectorAll('div.scroll, div.wrap'))
    .filter(d => d.scrollWidth > d.clientWidth + 1).map(d => {
      let h = d.previousElementSibling; while (h && h.tagName !== 'H2') h = h.previousElementSibling;
      return (h ? h.textContent : 'a table') + ' (' + d.scrollWidth + ' px in ' + d.clientWidth + ' px)'; });
  return {scrollWidth: de.scrollWidth, clientWidth: cw, innerWidth: window.innerWidth,
          height: de.scrollHeight, wide: wide.slice(0, 5), clipped: clipped};
})()"""

# Click the trial table's "accuracy" header (the page's own script sorts it): are the rows then in
# ascending order of accuracy? null when the page has no such table.
SORT = """(() => {
  const table = document.querySelector('table.sortable');
  const col = table ? Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === 'accuracy') : -1;
  if (col < 0) return null;
  table.tHead.rows[0].cells[col].click();
  const v = Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[col].dataset.v)).filter(x => !isNaN(x));
  return v.length > 0 && v.every((x, i) => i === 0 || v[i - 1] <= x);
})()"""


class BrowserError(RuntimeError):
    pass


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, exe: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="se-nas-chromium-")
        self._log = open(Path(self.profile) / "stderr.log", "w+b")  # a file, so that it never fills up
        to_browser, self._w = os.pipe()
        self._r, from_browser = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Both ends are first moved above
        # 9 (close-on-exec), so that placing one on 3 or 4 cannot overwrite the other.
        to_browser, from_browser = (_high_fd(fd) for fd in (to_browser, from_browser))

        def place_pipes():  # in the child, before exec: dup2 makes inheritable copies
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     preexec_fn=place_pipes, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(to_browser)
        os.close(from_browser)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                return None
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise self._exited()
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _exited(self) -> BrowserError:
        self._log.seek(0)
        err = self._log.read().decode(errors="replace").strip().splitlines()
        return BrowserError(f"Chromium exited (status {self.proc.wait()})" + (f": {err[-1]}" if err else ""))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise self._exited() from None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise BrowserError(f"no reply to {method} within {self.timeout:g} s")
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> bool:
        """Collect events for ``seconds`` at most; True once ``method`` has arrived."""
        deadline = time.monotonic() + seconds
        while not any(e.get("method") == method for e in self.events):
            msg = self._read_message(deadline)
            if msg is None:
                return False
            self.events.append(msg)
        return True

    def settle(self, seconds: float) -> None:
        """Collect whatever else arrives within ``seconds`` (late requests, script errors)."""
        deadline = time.monotonic() + seconds
        while (msg := self._read_message(deadline)) is not None:
            self.events.append(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            os.close(fd)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError("the screenshot is not a PNG")
    return struct.unpack(">II", data[16:24])


def _evaluate(browser: Chromium, expression: str, session: str):
    r = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    if "exceptionDetails" in r:
        raise BrowserError(f"a check's script failed on the page: {r['exceptionDetails'].get('text')}")
    return r["result"].get("value")


def check_page(page: Path, screenshot: Path, exe: str) -> list[str]:
    """Open ``page`` at 1400 px, write the screenshot; return one line per failed check."""
    url = page.resolve().as_uri()
    browser = Chromium(exe)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": url}, session)
        if not browser.wait_for("Page.loadEventFired", 30):
            raise BrowserError(f"{page} did not finish loading within 30 s")
        browser.settle(0.5)
        m = _evaluate(browser, MEASURE, session)
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": m["height"], "scale": 1}}, session)
        sorts = _evaluate(browser, SORT, session)
    finally:
        browser.close()
    loaded = browser.events  # everything the page did, from navigating to the screenshot
    data = base64.b64decode(shot["data"])
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(data)
    w, h = png_size(data)

    failures = []
    if m["innerWidth"] != WIDTH:
        failures.append(f"the window is {m['innerWidth']} px wide, not {WIDTH}: the check did not run as meant")
    if m["scrollWidth"] > m["clientWidth"]:
        failures.append(f"horizontal overflow at {WIDTH} px: the page is {m['scrollWidth']} px wide for a "
                        f"{m['clientWidth']} px window; wider than the window: {', '.join(m['wide'])}")
    if m["clipped"]:
        failures.append(f"a table is cut off at {WIDTH} px (it scrolls sideways): {'; '.join(m['clipped'])}")
    requests = [e["params"]["request"]["url"] for e in loaded if e.get("method") == "Network.requestWillBeSent"]
    fetched = [u for u in requests if u != url and not u.startswith("data:")]
    if fetched:
        failures.append(f"the page is not self-contained: it requested {len(fetched)} resource(s): "
                        + ", ".join(u[:100] for u in fetched[:5]))
    errors = [e["params"]["exceptionDetails"] for e in loaded if e.get("method") == "Runtime.exceptionThrown"]
    if errors:
        failures.append("script error on the page: " + "; ".join(
            (d.get("exception") or {}).get("description", d.get("text", "")).splitlines()[0] for d in errors))
    if sorts is False:
        failures.append("clicking the 'accuracy' header did not sort the trial table by accuracy")
    if w != WIDTH:
        failures.append(f"the screenshot is {w} px wide, not {WIDTH}")
    print(f"{page}: {m['scrollWidth']}x{m['height']} px page in a {m['clientWidth']} px window, "
          f"{len(requests)} request(s) ({len(fetched)} not the page or inline); screenshot {screenshot} ({w}x{h})")
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, help="the report.html to open")
    ap.add_argument("--screenshot", type=Path, help="where to write the screenshot (default: report-1400px.png in the temp folder)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                    help="the Chromium executable (default: chromium on PATH)")
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"check_report_browser: error: no such file {str(args.page)!r}; give a report.html", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"check_report_browser: error: no Chromium at {args.chromium!r}; install it "
              "(Debian: apt-get install chromium) or pass --chromium PATH", file=sys.stderr)
        return 2
    shot = args.screenshot or Path(tempfile.gettempdir()) / "report-1400px.png"
    try:
        failures = check_page(args.page, shot, args.chromium)
    except BrowserError as e:
        print(f"check_report_browser: error: {e}", file=sys.stderr)
        return 2
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
