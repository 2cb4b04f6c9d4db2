"""The dashboard in a real headless Chromium (Debian's), against a real `routing-sidecar serve`.

Playwright drives /usr/bin/chromium; no browser is ever downloaded. A screenshot is saved in
the test's tmp dir and under var/test-artifacts/.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.conftest import ROOT, config_dict, free_port, write_config
from tests.e2e.test_process import BIN

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "var" / "test-artifacts"
TOKEN = "dashboard-test-token"
WAIT_MS = 20_000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A real sidecar process; yields the admin port's base URL."""
    raw = config_dict(tmp_path)
    (tmp_path / "token").write_text(TOKEN)
    raw["admin"] = {"token_file": str(tmp_path / "token")}
    admin = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(write_config(tmp_path, raw)),
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", admin],
        stdout=log, stderr=log)
    base = f"http://{admin}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the admin port never answered"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert HAVE_CHROMIUM, "install Debian's chromium (apt-get install chromium; .ci/run does)"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def route(http: httpx.AsyncClient, task_id: str, task_type: str, layer: str,
                **extra: Any) -> dict[str, Any]:
    r = await http.post("/route", json={
        "taskId": task_id, "taskType": task_type, "estimatedInputTokens": 3000,
        "maxOutputTokens": 800, "labels": {"project": "alpha", "layer": layer}, **extra})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def shown_cells(page: Page) -> set[tuple[str, str, int, int]]:
    cells = await page.eval_on_selector_all("#matrix td.cell[data-model]", """tds => tds.map(
        td => [td.dataset.model, td.dataset.value, Number(td.dataset.decisions),
               Number(td.dataset.cost)])""")
    return {(m, v, n, c) for m, v, n, c in cells}


def api_cells(matrix: dict[str, Any]) -> set[tuple[str, str, int, int]]:
    return {(c["model"], c["value"], c["decisions"], c["estimated_cost_micros_per_decision"])
            for c in matrix["cells"]}


async def test_the_dashboard_shows_what_was_just_decided(
    served: str, browser: Browser, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10) as http:
        made = [await route(http, f"fix-{i}", "fix_bug", "api") for i in range(3)]
        made += [await route(http, f"links-{i}", "check_links", "docs", priority=10)
                 for i in range(2)]
        d = made[0]
        await http.post("/outcome", json={"decisionId": d["decisionId"], "success": True,
                                          "attempts": [
            {"model": d["model"], "status": "ATTEMPT_STATUS_TIMEOUT", "duration": "3s"},
            {"model": d["fallbacks"][0]["model"], "status": "ATTEMPT_STATUS_SUCCESS",
             "duration": "2s", "inputTokens": 3000, "outputTokens": 500}]})

        problems: list[str] = []
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type in ("error", "warning"):
                problems.append(f"{msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        await page.goto(served + "/")
        await page.wait_for_selector("body[data-refreshed]", timeout=WAIT_MS)
        await page.evaluate("window.sameDocument = true")

        # The matrix shows the models and task types of the decisions just made, and its
        # numbers are those of /api/routing/matrix.
        matrix = (await http.get("/api/routing/matrix")).json()
        assert {x["model"] for x in made} <= set(matrix["models"])
        assert set(matrix["values"]) == {"fix_bug", "check_links"}
        assert await shown_cells(page) == api_cells(matrix)
        headers = await page.eval_on_selector_all("#matrix thead th", "ths => ths.map(t => "
                                                  "t.textContent)")
        assert headers[1:] == matrix["values"]
        fb = await page.get_attribute(f'#matrix td[data-model="{d["model"]}"]'
                                      '[data-value="fix_bug"]', "data-fallback-rate")
        cell = next(c for c in matrix["cells"] if (c["model"], c["value"]) == (d["model"],
                                                                                "fix_bug"))
        assert cell["fallback_rate"] > 0
        assert fb is not None and float(fb) == pytest.approx(cell["fallback_rate"])

        # Expanding the newest decision shows its alternatives and its reason.
        newest = made[-1]
        block = page.locator(f'#decisions details[data-id="{newest["decisionId"]}"]')
        await block.locator("summary").click()
        rows = block.locator("table.alternatives tr.alt")
        await rows.first.wait_for(state="visible", timeout=WAIT_MS)
        assert await rows.count() == len(newest["alternatives"])
        assert [await r.get_attribute("data-model") for r in await rows.all()] == [
            a["model"] for a in newest["alternatives"]]
        assert newest["reason"] in await block.locator(".reason").inner_text()

        # Switching the matrix to a label, without a reload.
        await page.select_option("#by", "layer")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#matrix td.cell[data-value]')]"
            ".some(td => td.dataset.value === 'docs')", timeout=WAIT_MS)
        by_layer = (await http.get("/api/routing/matrix", params={"by": "layer"})).json()
        assert await shown_cells(page) == api_cells(by_layer)
        await page.select_option("#by", "task_type")

        # It refreshes by itself: a new task type appears, the same document still loaded.
        await route(http, "tests-1", "write_tests", "api")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#matrix thead th')]"
            ".some(th => th.textContent === 'write_tests')", timeout=WAIT_MS)
        assert await page.evaluate("window.sameDocument") is True
        assert await block.get_attribute("open") is not None  # kept open across refreshes

        # Pausing a model with the token, from the page.
        await page.fill("#token", TOKEN)
        await page.dispatch_event("#token", "change")
        target = made[-1]["model"]
        await page.click(f'#model-table tr[data-model="{target}"] button[data-action$="/pause"]')
        await page.wait_for_function(
            f"""() => document.querySelector('#model-table tr[data-model="{target}"]')
                ?.textContent.includes('paused')""", timeout=WAIT_MS)
        perf = (await http.get("/api/routing/performance")).json()
        assert next(m for m in perf["models"] if m["name"] == target)["paused"] is True

        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "dashboard.png")
        assert shot.stat().st_size > 10_000
        assert problems == []


async def test_without_javascript_the_page_is_readable_tables(
    served: str, browser: Browser
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10) as http:
        d = await route(http, "plain-1", "fix_bug", "api")
        matrix = (await http.get("/api/routing/matrix")).json()
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto(served + "/")
        assert await page.get_attribute("body", "data-refreshed") is None  # no script ran
        assert await shown_cells(page) == api_cells(matrix)
        assert d["model"] in await page.inner_text("#providers-section") or d["provider"] in (
            await page.inner_text("#providers-section"))
        summary = page.locator(f'#decisions details[data-id="{d["decisionId"]}"] summary')
        await summary.click()  # <details> opens without any script
        assert await page.locator("#decisions table.alternatives tr.alt").count() == len(
            d["alternatives"])
        assert "project:alpha" in await page.inner_text("#budgets")
    finally:
        await context.close()
