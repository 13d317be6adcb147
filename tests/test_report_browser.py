"""The HTML report in a real headless browser (Chromium through Selenium): every figure decodes, the
table has one row per record, nothing is fetched from the network. Skipped, with the reason, when
Chromium, its driver or Selenium is missing (`make browser` installs them)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_report import _demo_store

from qrobust.reporting import write_report


def _driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("Selenium is not installed; run `make browser` to check the report in headless Chromium")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not binary or not driver_bin:
        pytest.skip("Chromium and chromedriver are not installed; run `make browser` to check the report in a "
                    "headless browser")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    store = _demo_store(tmp_path / "res")
    index = write_report(tmp_path / "res")
    n_records = len(store.records())
    driver = _driver()
    try:
        driver.get(index.as_uri())
        state = driver.execute_script("""
            const imgs = Array.from(document.images);
            return {
              ready: document.readyState,
              images: imgs.length,
              decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
              widths: imgs.map(i => i.naturalWidth),
              rows: document.querySelectorAll('tr.rec').length,
              title: document.title,
              external: performance.getEntriesByType('resource').map(e => e.name)
                          .filter(n => !n.startsWith('data:') && !n.startsWith('file:')),
            };""")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    pngs = list(index.parent.glob("*.png"))
    assert state["ready"] == "complete" and state["title"] == "qrobust report"
    assert state["images"] == len(pngs) and state["decoded"] == state["images"]  # every embedded figure decodes
    assert min(state["widths"]) > 300
    assert state["rows"] == n_records and state["external"] == []
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_reproduction_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    from test_reproduce import synthetic_page
    path, result, figs = synthetic_page(tmp_path)
    driver = _driver()
    try:
        driver.get(path.as_uri())
        state = driver.execute_script("""
            const imgs = Array.from(document.images);
            return {decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, images: imgs.length,
                    claims: document.querySelectorAll('tr.claim').length,
                    comparisons: document.querySelectorAll('tr.comparison').length,
                    summary: document.getElementById('summary').textContent};""")
    finally:
        driver.quit()
    assert state["images"] == state["decoded"] == len(figs)
    assert state["claims"] == len(result["claims"])
    assert state["comparisons"] == sum(c["n"] for c in result["claims"])
    assert state["summary"] == result["summary"]
