"""Headless Chromium for the browser tests, and a dump of the store to prove it unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SELFPLAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright; skips when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where screenshots go: $SELFPLAY_TEST_ARTIFACTS (kept by CI) or the test's tmp dir."""
    directory = Path(os.environ.get("SELFPLAY_TEST_ARTIFACTS") or tmp_path) / "dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def dump_store() -> dict:
    """Every document and index of the connected database, comparable before/after."""
    import mongoengine as me

    db = me.get_db()
    out = {}
    for name in sorted(db.list_collection_names()):
        docs = sorted(repr(sorted(doc.items())) for doc in db[name].find())
        out[name] = (docs, sorted(db[name].index_information()))
    return out


def store_kind(store: str) -> str:
    """'embedded' or 'server' (the store fixture yields the server's URI), for file names."""
    return "embedded" if store == "embedded" else "server"
