"""Helpers of the ``covseg serve`` tests: a real server in a subprocess, a headless Chromium,
and what the tests read off the page (pixel counts of screenshots, the viewer's redraws,
timings). The fixtures are in ``_serve_fixtures`` (``pytest_plugins``)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, offline, no sandbox (CI runs as root), software WebGL.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@dataclass
class Served:
    """A ``covseg serve`` subprocess."""

    proc: subprocess.Popen
    url: str
    workspace: Path | None
    startup_s: float
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig``; the exit status, once the whole log is read."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)
        return rc

    def post(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)


def start_server(*args: str, cwd: Path, timeout: float = 60) -> Served:
    """``python -m covseg serve --port 0 ARGS`` (one torch thread); returns when ``/`` answers.

    ``startup_s`` is the time from starting the process until the page is served.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "covseg", "serve", "--port", "0", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if m := re.search(r"covseg serve: (http://\S+/)", line):
                found["url"] = m.group(1)
            if m := re.search(r"uploads and results in (.+) \((removed on exit|kept)\)", line):
                found["workspace"] = m.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(timeout) or "url" not in found:
        proc.kill()
        raise RuntimeError("covseg serve did not start:\n" + "\n".join(lines))
    while True:
        try:
            with urllib.request.urlopen(found["url"], timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                proc.kill()
                raise RuntimeError("covseg serve did not answer:\n" + "\n".join(lines)) from None
            time.sleep(0.02)
    startup = time.perf_counter() - t0
    workspace = Path(found["workspace"]) if "workspace" in found else None
    return Served(proc, found["url"], workspace, startup, lines, reader)


def wait_until(predicate, timeout: float = 60, step: float = 0.1):
    """Poll ``predicate()`` until it returns something truthy; that value."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if value := predicate():
            return value
        time.sleep(step)
    raise TimeoutError(f"not within {timeout} s")


def coloured_pixels(png: bytes) -> dict[str, int]:
    """Pixels of a screenshot whose colour is the infection overlay's (red dominates by more
    than 100) or the lung overlay's (green dominates by more than 40). The CT is grey and the
    crosshair light blue, so neither counts."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "infection": int(((r - np.maximum(g, b)) > 100).sum()),
        "lungs": int(((g - np.maximum(r, b)) > 40).sum()),
    }


# ------------------------------------------------------------------ reading the page
SHOWN = "body[data-shown]:not([data-shown=''])"


def shown_job(page, served, timeout: float = 120) -> dict:
    """The job whose images the viewer shows, once it shows one.

    Raises:
        AssertionError: an error message appeared on the page first.
    """
    errors = page.locator(".error-text").count()
    page.wait_for_function(
        """(errors) => document.querySelector("body[data-shown]:not([data-shown=''])")
            || document.querySelectorAll(".error-text").length > errors""",
        arg=errors,
        timeout=timeout * 1000,
    )
    if page.locator(".error-text").count() > errors:
        raise AssertionError(page.locator(".error-text").first.inner_text())
    job_id = page.get_attribute("body", "data-shown")
    return page.request.get(f"{served.url}api/jobs/{job_id}").json()


def renders(page) -> int:
    """How many times the viewer has drawn its canvas."""
    return int(page.get_attribute("#viewer", "data-renders") or 0)


#: JS: do ``[what, selector, value]`` (``click``; ``key``: a keydown of ``value``; ``change`` or
#: ``input``: set ``value`` and fire that event), then wait until each viewer box named in
#: ``boxes`` has drawn once more; the milliseconds in between.
_TIMED = """async ([what, selector, value, boxes]) => {
    const drawn = Promise.all(boxes.map((id) => new Promise((resolve) => {
        const box = document.getElementById(id);
        const before = Number(box.dataset.renders || 0);
        const watch = new MutationObserver(() => {
            if (Number(box.dataset.renders) > before) { watch.disconnect(); resolve(); }
        });
        watch.observe(box, { attributes: true, attributeFilter: ["data-renders"] });
    })));
    const el = document.querySelector(selector);
    const t0 = performance.now();
    if (what === "click") el.click();
    else if (what === "key") {
        el.dispatchEvent(new KeyboardEvent("keydown", { key: value, bubbles: true }));
    } else {
        el.value = value;
        el.dispatchEvent(new Event(what, { bubbles: true }));
    }
    await drawn;
    return performance.now() - t0;
}"""


def timed(
    page, what: str, selector: str, value: str = "", boxes: tuple[str, ...] = ("viewer",)
) -> float:
    """Milliseconds from an action on the page until the viewer (each of ``boxes``: the ids of
    viewer boxes, ``viewer-b`` the comparison's second) has drawn its result."""
    return page.evaluate(_TIMED, [what, selector, value, list(boxes)])
