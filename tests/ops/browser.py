"""Headless Chromium driven over the DevTools protocol (websockets), for page tests.

`ensure_chromium()` installs Debian's `chromium` package when it is missing (apt-get, as root) and
skips the test only when that is impossible. `open_page(url)` loads a page and reports what a user
would notice: console errors, uncaught exceptions, failed loads, and every image's natural size.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-dev-shm-usage"]
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def ensure_chromium() -> str:
    """The chromium binary, installed with apt-get if needed; skips the test if that cannot work."""
    found = find_chromium()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get is not usable (needs root): apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(INSTALL, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:  # stale package lists
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=900, env=env)
        done = subprocess.run(INSTALL, capture_output=True, text=True, timeout=900, env=env)
    if not find_chromium():
        pytest.skip(f"could not install chromium with apt-get: {done.stderr[-500:]}")
    return find_chromium()


@dataclass
class PageReport:
    loaded: bool
    images: list[dict]                                 # {"src", "naturalWidth", "complete"}
    errors: list[str] = field(default_factory=list)    # console errors, exceptions, failed loads


class Chromium:
    """One headless browser process (own profile dir), stopped on close."""

    def __init__(self, binary: str, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.port = self._port()

    def _port(self, timeout_s: float = 60) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def open_page(self, url: str, timeout_s: float = 30) -> PageReport:
        from websockets.sync.client import connect

        with connect(self._browser_ws(), max_size=None) as browser:
            target = _Session(browser).call("Target.createTarget", {"url": "about:blank"})["targetId"]
        with connect(f"ws://127.0.0.1:{self.port}/devtools/page/{target}", max_size=None) as ws:
            page = _Session(ws)
            for domain in ("Page", "Runtime", "Log"):
                page.call(f"{domain}.enable")
            page.call("Page.navigate", {"url": url})
            loaded = page.wait_for("Page.loadEventFired", timeout_s)
            page.drain(0.5)  # late console messages
            js = ("JSON.stringify(Array.from(document.images).map(i => ({src: i.currentSrc || i.src, "
                  "naturalWidth: i.naturalWidth, complete: i.complete})))")
            value = page.call("Runtime.evaluate", {"expression": js, "returnByValue": True})["result"]["value"]
            return PageReport(loaded, json.loads(value), page.errors())

    def _browser_ws(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=10) as r:
            return json.load(r)["webSocketDebuggerUrl"]

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()


class _Session:
    """Request/response over one DevTools websocket; events are kept for inspection."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, params: dict | None = None, timeout_s: float = 30) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if any(e.get("method") == event for e in self.events):
            return True
        while time.monotonic() < deadline:
            try:
                msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                return False
            self.events.append(msg)
            if msg.get("method") == event:
                return True
        return False

    def drain(self, seconds: float) -> None:
        self.wait_for("(none)", seconds)

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out
