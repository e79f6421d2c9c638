"""A headless Chromium driven over the DevTools protocol: what a page logged, requested, drew.

Used by the browser tests of report.html and the dashboard (and handy by hand): open a
file:// page, collect console errors, uncaught exceptions and every network request, evaluate
a script, take a full-page screenshot. Debian's `chromium` package, no browser download; the
websocket client is the `websockets` package; only loopback is used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import HarnessError

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--remote-debugging-port=0")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The installed Chromium, if any (`make chromium` installs Debian's package)."""
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    return found


@dataclass
class PageVisit:
    """What one page load showed: errors, requests, load time."""

    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    load_ms: float = 0.0


class Browser:
    """`with Browser(profile) as b: visit = b.open(path)`; the process group ends on exit."""

    def __init__(self, profile_dir: Path, width: int = 1300, height: int = 1000,
                 timeout_s: float = 60.0) -> None:
        self.profile_dir = profile_dir
        self.size = (width, height)
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._ws: Any = None
        self._session = ""
        self._next = 0
        self._events: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Browser:
        exe = chromium_path()
        if exe is None:
            raise HarnessError("chromium is not installed: `make chromium` (Debian's package)")
        from websockets.sync.client import connect

        argv = [exe, *FLAGS, f"--user-data-dir={self.profile_dir}",
                f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        self._proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      text=True, start_new_session=True)
        url = self._listening_url()
        self._ws = self._stack.enter_context(
            connect(url, max_size=None, open_timeout=self.timeout_s))
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, browser=True)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1,
            "mobile": False})
        return self

    def _listening_url(self) -> str:
        assert self._proc is not None and self._proc.stderr is not None
        deadline = time.monotonic() + self.timeout_s
        seen = []
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            seen.append(line)
            m = _LISTENING.search(line)
            if m:
                return m[1]
        raise HarnessError("chromium did not open its DevTools port; its output:\n"
                           + "".join(seen[-20:]))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

    def call(self, method: str, params: dict[str, Any] | None = None,
             browser: bool = False) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are kept for `open`."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if not browser:
            msg["sessionId"] = self._session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            reply = json.loads(self._ws.recv(timeout=self.timeout_s))
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise HarnessError(f"chromium: {method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._events.append(reply)
        raise HarnessError(f"chromium: {method}: no answer in {self.timeout_s:.0f} s")

    def _wait_event(self, name: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == name for e in self._events):
            if time.monotonic() > deadline:
                raise HarnessError(f"chromium: no {name} in {self.timeout_s:.0f} s")
            self._events.append(json.loads(self._ws.recv(timeout=self.timeout_s)))

    def open(self, path: Path) -> PageVisit:
        """Load a file and report its console errors, exceptions, requests and load time."""
        self._events = []
        url = path.resolve().as_uri()
        self.call("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")
        visit = PageVisit(url)
        for e in self._events:
            p = e.get("params", {})
            if e.get("method") == "Network.requestWillBeSent":
                visit.requests.append(p["request"]["url"])
            elif e.get("method") == "Runtime.exceptionThrown":
                visit.errors.append(str(p["exceptionDetails"].get("text")))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                visit.errors.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
            elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                visit.errors.append(str(p["entry"].get("text")))
        visit.load_ms = float(self.evaluate(
            "performance.getEntriesByType('navigation')[0].loadEventEnd"))
        return visit

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise HarnessError(f"chromium: {expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole length when `full_page`)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000),
                "scale": 1})
        data = self.call("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
