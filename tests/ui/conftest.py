"""The dashboard's browser tests: an embedded farm with three tenants' tokens, and Debian's chromium driven by
Playwright through `executable_path` (Playwright's own browser download is never used).

A browser that cannot be found FAILS the tests (never skips them): `./dev.sh setup` installs `chromium`
(scripts/ensure-browser.sh); `RENDERFARM_TEST_CHROMIUM` names another executable.

Each test writes screenshots of the pages it visits to `tests/ui/screenshots/` (ignored by git); the README's
pictures in docs/images/ are copies of some of them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from renderfarm.embedded import EmbeddedFarm, running_farm
from shared.config import Settings

SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM_ENV = "RENDERFARM_TEST_CHROMIUM"
TOKENS = {
    "alice": "alice-dashboard-token-0123456789",
    "bob": "bob-dashboard-token-0123456789ab",
    "ops": "ops-dashboard-token-0123456789ab",
}
OPERATORS = "ops"
PAGE_TIMEOUT_MS = 90_000  # a render on a busy 2-core machine, first model load included


def chromium_executable() -> str:
    """The system chromium: `RENDERFARM_TEST_CHROMIUM`, else `chromium` (Debian) or `chromium-browser` on PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    candidates = [named] if named else ["chromium", "chromium-browser", "/usr/bin/chromium"]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    pytest.fail(
        f"no chromium browser found (tried {', '.join(c for c in candidates if c)}): run ./dev.sh setup, which "
        f"installs Debian's chromium, or set {CHROMIUM_ENV} to a Chromium executable"
    )


@dataclass
class Farm:
    embedded: EmbeddedFarm
    url: str

    def api(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, headers={"Authorization": f"Bearer {TOKENS[tenant]}"})


@pytest.fixture(scope="package")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("dashboard") / "data",
        api_tokens=",".join(f"{tenant}:{token}" for tenant, token in TOKENS.items()),
        operator_tenants=OPERATORS,
    )
    with running_farm(settings) as embedded:
        yield Farm(embedded, embedded.url)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_executable(), headless=True)
    yield browser
    browser.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Any]:
    """`new_page()`: a page in a fresh browser context (its own cookies), closed after the test."""
    contexts: list[Any] = []

    def make() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Page, farm: Farm, tenant: str) -> None:
    page.goto(f"{farm.url}/ui/")
    page.get_by_test_id("token").fill(TOKENS[tenant])
    page.get_by_test_id("signin").click()
    page.wait_for_url(f"{farm.url}/ui/")
    assert page.get_by_test_id("tenant").inner_text().startswith(tenant)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def png_b64(colour: tuple[int, int, int], *, mask: bool = False) -> str:
    """A 64×64 picture as base64: a solid colour, or a mask with a white square in the middle."""
    if mask:
        picture = Image.new("L", (64, 64), 0)
        picture.paste(255, (16, 16, 48, 48))
    else:
        picture = Image.new("RGB", (64, 64), colour)
        picture.paste((240, 240, 240), (24, 8, 40, 56))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def job_body(**fields: Any) -> dict[str, Any]:
    return {
        "init_images": [png_b64((180, 40, 40))],
        "prompt": "a red square",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 1,
        **fields,
    }
