"""`opdctl report`: one self-contained HTML page, checked as text and in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdctl.analysis.reader import RunTraces
from opdctl.analysis.report import sample_rollouts
from opdctl.cli import app

from .conftest import tiny_config, write_config

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def train(config: dict, path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "-c", str(write_config(path, config))])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """A Prune-OPD run with held-out accuracy, and a plain-OPD run to compare it with."""
    root = tmp_path_factory.mktemp("report")
    train(tiny_config(tiny_models, root / "prune", eval={"bench": ["synthetic"], "max_problems": 2}), root / "a.yaml")
    plain = {"enable": False}
    train(tiny_config(tiny_models, root / "plain", prune=plain, budget=plain), root / "b.yaml")
    return root


def report(*args: str) -> str:
    result = CliRunner().invoke(app, ["report", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_the_page_holds_everything_and_fetches_nothing(runs):
    report(str(runs / "prune"), "--compare", str(runs / "plain"), "-o", str(runs / "page.html"))
    page = (runs / "page.html").read_text()
    assert "default-src 'none'" in page  # the browser may load nothing from anywhere
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert not re.search(r"url\((?!data:)", page)
    for section in ("Run totals", "Comparison", "Curves", "Rollouts", "Config"):
        assert f"<h2>{section}</h2>" in page
    assert page.count('<img src="data:image/svg+xml;base64,') == 6
    assert "prune:\n  enable: true" in page and "accuracy on synthetic" in page
    assert "Showing all 24 traced rollouts" in page
    assert (runs / "page.html").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_the_default_page_goes_in_the_run_directory(runs):
    assert "report.html" in report(str(runs / "plain"))
    assert (runs / "plain" / "report.html").is_file()


@pytest.mark.slow
def test_big_runs_show_a_sample_and_say_so(runs):
    sample = sample_rollouts(RunTraces(runs / "prune"), 6)
    assert sample.traced == 24 and len(sample.rollouts) <= 6
    steps = [step for step, _ in sample.rollouts]
    assert steps[0] == 1 and steps[-1] == 4  # the first and the last traced step
    assert all(rollout < 4 for _, rollout in sample.rollouts)  # the first rollouts of a step, as traces keep them
    assert sample.note.startswith(f"a sample of {len(sample.rollouts)} of the 24 traced rollouts")
    page = report(str(runs / "prune"), "--rollouts", "6", "-o", str(runs / "small.html"))
    assert "small.html" in page
    assert f"Showing {sample.note}" in (runs / "small.html").read_text()


def test_a_missing_run_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: run directory not found: {tmp_path / 'nope'}"


# in a real browser ------------------------------------------------------------------


@pytest.fixture
def browser():
    """Headless Chromium from the system's packages, driven by selenium (no download, no network)."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("OPDCTL_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="opdctl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,2000",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_the_page_works_in_chromium(runs, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = runs / "browser.html"
    report(str(runs / "prune"), "--compare", str(runs / "plain"), "-o", str(page))
    browser.get(page.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    figures = browser.find_elements(By.CSS_SELECTOR, "#curves img")
    assert len(figures) == 6
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", f) for f in figures)
    assert {f.get_attribute("alt") for f in figures} >= {"Drift per step", "Loss and reverse KL", "Time per step"}

    shown = [r for r in browser.find_elements(By.CSS_SELECTOR, ".rollout") if r.is_displayed()]
    assert len(shown) == 1
    tokens = shown[0].find_elements(By.CSS_SELECTOR, ".t")
    colours = {t.value_of_css_property("background-color") for t in tokens}
    assert len(tokens) > 5 and len(colours) > 1 and "rgba(0, 0, 0, 0)" not in colours
    assert "w_t" in tokens[0].get_attribute("title")

    browser.find_element(By.ID, "next").click()
    now = [r for r in browser.find_elements(By.CSS_SELECTOR, ".rollout") if r.is_displayed()]
    assert [r.get_attribute("data-index") for r in now] == ["1"]
    browser.find_element(By.CSS_SELECTOR, "#colour-by option[value='o']").click()  # colour by overlap
    for token in now[0].find_elements(By.CSS_SELECTOR, ".t"):
        wanted = token.get_attribute("data-o").replace("rgb(", "").rstrip(")").split(",")
        assert token.value_of_css_property("background-color") == f"rgba({', '.join(wanted)}, 1)"
    assert browser.get_log("browser") == []
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
