"""The dashboard in a real browser: Debian's Chromium, headless, driven through Debian's
ChromeDriver by Selenium, against `minerva serve --api-key` (so the page must ask for the
key). It checks that the charts render, that they change under a short load, that the
recent requests list the load's requests with their stages, and that the playground
shows each token with its probability and alternatives and the prompt's importance.
Screenshots go to target/test-artifacts/ (dashboard.png, playground.png)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import API_KEY, REPO

CHAT = "smollm2-135m-instruct"
ARTIFACTS = REPO / "target" / "test-artifacts"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromedriver are not installed (scripts/test-openai-client.sh installs them)")
    profile = tempfile.mkdtemp(prefix="minerva-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1800",
    ]:
        options.add_argument(flag)
    # Selenium Manager must not look for a driver on the network: the path is given.
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message)


def updates(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.updates || 0)"))


def chart_images(driver) -> dict[str, str]:
    """Each chart's pixels, as a data URL of its canvas."""
    return driver.execute_script(
        "const out = {};"
        "for (const el of document.querySelectorAll('.chart')) {"
        "  const c = el.querySelector('canvas'); out[el.id] = c ? c.toDataURL() : null; }"
        "return out;"
    )


def test_the_dashboard_asks_for_the_key_and_its_charts_follow_a_load(browser, keyed_minerva_url):
    browser.get(f"{keyed_minerva_url}/dashboard")
    # The server wants a key: the page asks for it, then goes live.
    key_form = wait(browser, lambda d: d.find_element(By.ID, "key-form").is_displayed() and d.find_element(By.ID, "key-form"), "no key form")
    key_form.find_element(By.ID, "key").send_keys(API_KEY)
    key_form.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser, lambda d: d.find_element(By.ID, "live").text == "live", "the live stream did not connect")
    wait(browser, lambda d: updates(d) >= 2, "no snapshot arrived")

    # Six charts, each drawn on a canvas of real size.
    charts = browser.find_elements(By.CSS_SELECTOR, ".chart canvas")
    assert len(charts) == 6
    for canvas in charts:
        assert canvas.size["width"] > 100 and canvas.size["height"] > 100, canvas.size

    # A short load: the throughput and latency charts, the cards and the request list move.
    before = chart_images(browser)
    seen = updates(browser)
    client = openai.OpenAI(base_url=f"{keyed_minerva_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def ask(i: int):
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=16, temperature=0
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    rows = wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recent tbody tr")) >= 6 and d.find_elements(By.CSS_SELECTOR, "#recent tbody tr"),
        "the recent requests do not list the load",
    )
    assert CHAT in rows[0].text
    # Each listed request shows where its time went.
    assert rows[0].find_elements(By.CSS_SELECTOR, ".stages span")
    wait(browser, lambda d: updates(d) >= seen + 3, "the snapshots stopped")
    after = chart_images(browser)
    for chart in ["chart-throughput", "chart-latency"]:
        assert after[chart] != before[chart], f"{chart} was not redrawn"
    # What they drew: the load's generated tokens/s and its time to first token.
    peak = browser.execute_script(
        "const s = window.minervaCharts.throughput.data[2].filter(v => v != null); return s.length ? Math.max(...s) : 0;")
    assert peak > 0, "the throughput chart shows no generated tokens"
    ttft = browser.execute_script(
        "return window.minervaCharts.latency.data[1].filter(v => v != null).length;")
    assert ttft > 0, "the latency chart shows no time to first token"
    assert browser.find_element(By.ID, "card-ttft").text != "– · –"
    models = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert any(CHAT in row.text for row in models)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_the_playground_shows_token_probabilities_and_prompt_importance(browser, keyed_minerva_url):
    if not browser.current_url.startswith(keyed_minerva_url):
        browser.get(f"{keyed_minerva_url}/dashboard")
    browser.find_element(By.ID, "tab-playground").click()
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "play-model")).options) >= 1, "no models to choose from")
    Select(browser.find_element(By.ID, "play-model")).select_by_visible_text(CHAT)
    prompt = browser.find_element(By.ID, "play-prompt")
    prompt.clear()
    prompt.send_keys("The capital of France is")
    max_tokens = browser.find_element(By.ID, "play-max")
    max_tokens.clear()
    max_tokens.send_keys("1")
    browser.find_element(By.ID, "play-send").click()

    tokens = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#play-output .token"), "no tokens shown")
    assert tokens[0].text.strip() == "Paris"
    p = float(tokens[0].get_attribute("data-p"))
    assert 0.5 < p <= 1.0, p
    # Hovering a token shows its probability and its alternatives.
    ActionChains(browser).move_to_element(tokens[0]).perform()
    tooltip = wait(browser, lambda d: d.find_element(By.ID, "tooltip").is_displayed() and d.find_element(By.ID, "tooltip"), "no tooltip")
    assert "%" in tooltip.text
    assert len(tooltip.find_elements(By.CSS_SELECTOR, "tr")) >= 2, tooltip.text

    browser.find_element(By.ID, "play-explain").click()
    words = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#play-heat .word"), "no heat map")
    assert "".join(w.text for w in words).split() == "The capital of France is".split()
    ranks = {w.text.strip(): int(w.get_attribute("data-rank")) for w in words}
    # As the explanation tests find on this model: the answer rests on "France".
    assert ranks["France"] <= 3, ranks

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
