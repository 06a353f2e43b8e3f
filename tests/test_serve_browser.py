"""The playground in a real headless browser (Debian's chromium through its chromedriver, driven by
selenium): load the page, type a prompt, set a strength, generate, and read both panes. The base
pane equals plain generation; the steered pane equals the steered generation and differs.

Skipped only outside CI when no chromium is installed; under CI (``$CI`` set) a missing browser
fails the test (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import serving, write_vectors

ARCH = "llama"
PROMPT = "Tell me a story about a cat"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the playground test needs {what} in CI (.ci/run installs chromium and chromium-driver)")
    pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium")
    binary = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver_path = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if binary is None or driver_path is None:
        _need("chromium and chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,960"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def setup(tiny_dir, shared_models, tmp_path_factory):
    oracle = shared_models(ARCH)
    folder = tmp_path_factory.mktemp("browser_vectors")
    vectors = write_vectors(oracle, folder)
    with serving(["--model", str(tiny_dir(ARCH)), "--vectors-dir", str(folder)],
                 tmp_path_factory.mktemp("browser_log")) as server:
        yield server, oracle, vectors


def test_playground_streams_base_and_steered_side_by_side(browser, setup, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, oracle, vectors = setup
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "vector")).options) == 3)
    assert "llama" in browser.find_element(By.ID, "model-info").text

    Select(browser.find_element(By.ID, "vector")).select_by_value("love")
    Select(browser.find_element(By.ID, "layer")).select_by_value("2")
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    strength = browser.find_element(By.ID, "strength")
    strength.clear()
    strength.send_keys("6")
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    assert browser.find_element(By.ID, "strength-shown").text == "6"
    browser.find_element(By.ID, "generate").click()

    def pane(name: str) -> str:
        return browser.execute_script(f"return document.getElementById('{name}-output').dataset.state")

    WebDriverWait(browser, 60).until(lambda d: pane("base") != "running" and pane("steered") != "running"
                                     and pane("base") != "idle")
    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert pane("base") == "done" and pane("steered") == "done", browser.find_element(By.ID, "error").text

    base = browser.execute_script("return document.getElementById('base-output').textContent")
    steered = browser.execute_script("return document.getElementById('steered-output').textContent")
    ids = oracle.encode(PROMPT, chat=True)
    plain = oracle.prompts.decode(oracle.generate_tokens(ids, max_tokens=24))
    interventions = vectors["love"].select([oracle.resolve("layers.2").path]).to_interventions(scale=6.0)
    want = oracle.prompts.decode(oracle.generate_tokens(ids, max_tokens=24, interventions=interventions))
    assert base == plain
    assert steered == want != plain
    # tokens are coloured by their projection (the monitor streams one value per token)
    coloured = browser.execute_script(
        "return [...document.querySelectorAll('#steered-output span')].filter(s => s.style.background).length")
    assert coloured >= 10
    assert "tokens" in browser.find_element(By.ID, "steered-status").text


def test_playground_sweep_fills_the_grid(browser, setup):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _, _ = setup
    open_sweep(browser, server, "love")
    assert offered_layers(browser) == [("1", True), ("2", True)]
    for field, value in (("sweep-strengths", "-6 0 6"), ("sweep-tokens", "6")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "sweep").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "sweep-status").text == "6 / 6")
    cells = browser.find_elements(By.CSS_SELECTOR, "#sweep-table td")
    assert len(cells) == 6
    assert all("error" not in c.text and "mean projection" in c.text for c in cells)


def open_sweep(browser, server, vector: str) -> None:
    """The page (freshly loaded) with ``vector`` picked and the sweep box open."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "vector")).options) == 3)
    Select(browser.find_element(By.ID, "vector")).select_by_value(vector)
    browser.find_element(By.CSS_SELECTOR, "#sweep-box summary").click()


def counters(server) -> dict:
    """The engine's request counters (/health without its clock)."""
    stats = httpx.get(server.url + "/health", timeout=10).json()
    stats.pop("uptime_s")
    return stats


def offered_layers(browser) -> list[tuple[str, bool]]:
    """The sweep's layer choices: (layer, ticked) for each checkbox."""
    boxes = browser.execute_script(
        "return [...document.querySelectorAll('#sweep-layers input[type=checkbox]')].map(b => [b.value, b.checked])")
    return [(value, ticked) for value, ticked in boxes]


def test_playground_sweep_offers_only_the_vectors_layers(browser, setup):
    """The sweep's layers come from the picked vector (calm: layer 2 only; edge: layer 1 only); a layer the
    vector lacks is refused with its name and the vector's layers before any request goes out."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, _, vectors = setup
    for name in ("calm", "edge", "love"):
        open_sweep(browser, server, name)
        want = [str(int(site.rsplit(".", 1)[1])) for site in vectors[name].sites]  # the file's own layers
        assert [layer for layer, _ in offered_layers(browser)] == want, name
        assert all(ticked for _, ticked in offered_layers(browser))

    # the picked vector changes under ticked layers it lacks (no change event: the choices stay love's)
    open_sweep(browser, server, "love")
    before = counters(server)
    browser.execute_script("document.getElementById('vector').value = 'calm'")
    assert Select(browser.find_element(By.ID, "vector")).first_selected_option.get_attribute("value") == "calm"
    browser.find_element(By.ID, "sweep").click()
    assert browser.find_element(By.ID, "error").text == "vector calm has no direction at layer 1; its layers: 2"
    assert browser.find_elements(By.CSS_SELECTOR, "#sweep-table td") == []
    time.sleep(0.5)  # a cell's request, had one gone out, would have reached the server by now
    assert counters(server) == before  # nothing was sent


def test_playground_underlines_the_steered_tokens(browser, setup):
    """Steering positions chosen as a span object (here generated tokens but two, by index inside
    ``and``/``not``): the steered pane underlines exactly the tokens the response's
    ``steered_tokens`` names, as located by hand; the base pane underlines none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, oracle, vectors = setup
    ids = oracle.encode(PROMPT, chat=True)
    P, n = len(ids), 8
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "vector")).options) == 3)
    Select(browser.find_element(By.ID, "vector")).select_by_value("love")
    Select(browser.find_element(By.ID, "layer")).select_by_value("2")
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    for field, value in (("strength", "6"), ("max-tokens", str(n))):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    span = {"and": ["generated", {"not": [P + 1, P + 3]}]}
    browser.execute_script("const o = new Option('mixed', arguments[0]); document.getElementById('positions').add(o);"
                           "document.getElementById('positions').value = arguments[0];", json.dumps(span))
    browser.find_element(By.ID, "generate").click()

    def state(name: str) -> str:
        return browser.execute_script(f"return document.getElementById('{name}-output').dataset.state")

    WebDriverWait(browser, 60).until(lambda d: state("base") == "done" and state("steered") == "done")
    steered_at = [p for p in range(P, P + n) if p not in (P + 1, P + 3)]
    interventions = vectors["love"].select([oracle.resolve("layers.2").path]).to_interventions(
        scale=6.0, positions=steered_at)
    tokens = oracle.generate_tokens(ids, max_tokens=n, interventions=interventions)
    marks = browser.execute_script(
        "return [...document.querySelectorAll('#steered-output span')].map(s => s.classList.contains('steered'))")
    want = [i not in (1, 3) for i in range(len(tokens))]
    assert marks[:len(tokens)] == want and not any(marks[len(tokens):]), marks
    assert browser.execute_script("return document.getElementById('steered-output').textContent") == \
        oracle.prompts.decode(tokens)
    assert browser.execute_script("return document.querySelectorAll('#base-output span.steered').length") == 0
