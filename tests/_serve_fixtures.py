"""The fixtures of the ``covseg serve`` browser tests (``pytest_plugins = ["_serve_fixtures"]``):
a server with the tiny checkpoint per test module, one headless Chromium per module, and a fresh
page per test that records anything it asked of another host and every page error."""

from __future__ import annotations

import pytest

from _serve_helpers import CHROMIUM, CHROMIUM_ARGS, browser_missing, start_server


@pytest.fixture(scope="module")
def served(request, checkpoint, tmp_path_factory):
    """`covseg serve` in a subprocess, with the tiny checkpoint; the upload limit is the test
    module's ``MAX_UPLOAD_MB`` (1 MiB if it has none)."""
    cwd = tmp_path_factory.mktemp("served")
    limit = str(getattr(request.module, "MAX_UPLOAD_MB", 1))
    server = start_server("--checkpoint", str(checkpoint), "--max-upload-mb", limit, cwd=cwd)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    """A fresh page on the served app; what it asked of anyone else, and its errors."""
    context = browser.new_context(viewport={"width": 1360, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.outside = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]

    def route(r):
        if r.request.url.startswith(served.url):
            r.continue_()
        else:
            page.outside.append(r.request.url)  # type: ignore[attr-defined]
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]

    def console(message):  # a refused upload's 4xx answer is expected, nothing else is
        if message.type == "error" and "responded with a status of 4" not in message.text:
            page.errors.append(message.text)  # type: ignore[attr-defined]

    page.on("console", console)
    page.goto(served.url)
    page.wait_for_selector("body[data-viewer='ready']", timeout=30_000)
    yield page
    assert page.outside == [], "the page asked for something this server does not serve"
    assert page.errors == []
    context.close()
