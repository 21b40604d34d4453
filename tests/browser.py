"""A small Chrome DevTools Protocol client for tests: real headless Chromium, driven over
its DevTools websocket with the ``websockets`` library (no browser-automation package).

    with Browser.launch(tmp_path) as browser:
        page = browser.page()
        page.navigate(url)
        page.wait_for("document.querySelector('#grid button') !== null", "the grid")
        page.evaluate("document.querySelector('#pay-cash').click()")
        page.screenshot(tmp_path / "page.png")

Chromium is always killed (its whole process group) and its profile folder removed, even
when a test fails half way.  Chromium missing fails the test in CI and skips it elsewhere
(``tests.services.unavailable``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.services import unavailable

CHROMIUM = "/usr/bin/chromium"
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0


class Page:
    """One tab, attached over the browser's connection (a flat CDP session)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.call(method, session=self.session, **params)

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        """Open ``url`` and wait until its document (and its scripts) have loaded."""
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise AssertionError(f"cannot open {url}: {answer['errorText']}")
        self.wait_for("document.readyState === 'complete'", f"{url} to load", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"{expression!r} threw in the page: {text}")
        return answer["result"].get("value")

    def wait_for(self, condition: str, what: str, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value.  An
        expression that throws (an element not there yet) counts as not yet."""
        guarded = f"(() => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }})()"
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                shown = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                     f"({condition}); the page shows:\n{shown}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """Click the element ``selector`` finds (as a cashier's tap: a DOM click)."""
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                              " if (!e || e.disabled) return false; e.click(); return true; })()")
        if not found:
            raise AssertionError(f"nothing enabled to click at {selector!r}")

    def text(self, selector: str) -> str:
        value = self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? null")
        if value is None:
            raise AssertionError(f"no element at {selector!r}")
        return str(value)

    def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the whole page at ``path``; returns its bytes."""
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data


class Browser:
    """A headless Chromium process and one DevTools websocket to it."""

    def __init__(self, proc: subprocess.Popen[bytes], profile: Path, ws: ClientConnection
                 ) -> None:
        self.proc, self.profile, self.ws = proc, profile, ws
        self.ids = itertools.count(1)

    @classmethod
    @contextmanager
    def launch(cls, logs: Path, width: int = 1280, height: int = 900) -> Iterator[Browser]:
        """Start Chromium (its stderr goes to ``logs``/chromium.err) and yield it."""
        if not Path(CHROMIUM).exists():
            unavailable(CHROMIUM, "not installed",
                        "apt-get install chromium (.ci/run installs it when missing)")
        profile = Path(tempfile.mkdtemp(prefix="tillsync-chromium-"))
        logs.mkdir(parents=True, exist_ok=True)
        err = logs / "chromium.err"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", f"--window-size={width},{height}",
                 "about:blank"],
                stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            url = cls._devtools_url(proc, err)
            with connect(url, max_size=None, open_timeout=30) as ws:
                yield cls(proc, profile, ws)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
            shutil.rmtree(profile, ignore_errors=True)

    @staticmethod
    def _devtools_url(proc: subprocess.Popen[bytes], err: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = _LISTENING.search(err.read_text(errors="replace"))
            if found:
                return found.group(1)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"Chromium did not say where DevTools listens (exit "
                             f"{proc.poll()}):\n{err.read_text(errors='replace')[-3000:]}")

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events read meanwhile are dropped)."""
        ident = next(self.ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Chromium did not answer {method} in {CALL_TIMEOUT} s")
            answer = json.loads(self.ws.recv(timeout=left))
            if answer.get("id") != ident:
                continue  # an event, or nothing we wait for
            if "error" in answer:
                raise AssertionError(f"{method} failed: {answer['error']}")
            result: dict[str, Any] = answer["result"]
            return result

    def page(self) -> Page:
        """A new tab, attached and ready to navigate."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        return page
