"""The operator page in a real browser (headless Chromium driven by Selenium): a station started by
`zsad-edge watch --ui` on two MJPEG-over-HTTP cameras, one judged normal and one anomalous
(per-source thresholds in the station file), and the page's token flow on a non-localhost address.

Set ZSAD_EDGE_PAGE_SCREENSHOT=PATH to keep the page's screenshot (docs/images/station_page.png)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import time
import urllib.request

import numpy as np
import pytest
from needs import require_program
from station_helpers import Burst, MjpegServer, free_port, start_watch

from zsad_edge.runtime.station.events import read_events

pytestmark = [pytest.mark.needs_module("selenium", "starlette", "uvicorn"), pytest.mark.slow]
WAIT_S = 120
TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver, keeping the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = require_program("chromium"), require_program("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()


def _console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _until(condition, what, timeout=WAIT_S):
    """The condition's first true value; an element that went away meanwhile (the page navigated,
    the list moved on) counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _tile(browser, source):
    return browser.find_element("css selector", f'article.tile[data-source="{source}"]')


def _number(browser, source, field) -> int:
    """A tile's count; -1 before the page has built the tile (its first state has not come yet)."""
    tiles = browser.find_elements("css selector", f'article.tile[data-source="{source}"]')
    return int(tiles[0].get_attribute(f"data-{field}") or -1) if tiles else -1


def _frames(seed, count=6):
    rng = np.random.default_rng(seed)
    return [(rng.random((120, 160, 3)) * 255).astype(np.uint8) for _ in range(count)]


def _events(out):
    return list(read_events(out / "events.jsonl"))


def test_the_page_shows_live_tiles_anomalies_pause_and_a_lost_camera(tiny_built, tmp_path, browser):
    good, bad = MjpegServer(_frames(0), fps=8.0), MjpegServer(_frames(1), fps=8.0)
    out, port = tmp_path / "out", free_port()
    config = tmp_path / "station.toml"
    config.write_text(
        f'out = "{out}"\n'
        # the random-weight model scores these frames 0.15-0.35: one camera's threshold above, one below
        f'[[source]]\nname = "good"\nuri = "{good.url}"\nimage_threshold = 0.9\nmap_threshold = 3.4\n'
        f'[[source]]\nname = "bad"\nuri = "{bad.url}"\nimage_threshold = 0.05\nmap_threshold = 2.8\n'
    )
    proc = start_watch(tiny_built.path, "--config", config, "--ui", port, "--status-s", 0, "--stall-s", 2)
    url = f"http://127.0.0.1:{port}/"
    try:
        _until(lambda: proc.poll() is not None or _answers(url + "api/state"), "the page's server")
        assert proc.poll() is None, proc.stderr.read()
        browser.get(url)
        loaded = time.time()
        _until(lambda: _number(browser, "good", "processed") > 0 and _number(browser, "bad", "processed") > 0, "tiles")
        first = _number(browser, "good", "processed")
        _until(lambda: _number(browser, "good", "processed") >= first + 5, "the frame counter to go up")
        assert "normal" in _tile(browser, "good").find_element("css selector", ".verdict").text
        assert "anomalous" in _tile(browser, "bad").find_element("css selector", ".verdict").text

        # anomalies scored after the page loaded are listed within 2 s of being scored (median)
        _until(lambda: len(browser.find_elements("css selector", "#anomalies li")) >= 8, "anomalies in the list")
        listed = browser.execute_script(
            "return [...document.querySelectorAll('#anomalies li')].map(li => [li.dataset.id, li.dataset.listedAt])"
        )
        entries = {entry["id"]: entry for entry in _state(url)["anomalies"]}
        scored = {(e["source"], e["frame"]): e["captured_at"] + e["latency_ms"] / 1e3 for e in _events(out)
                  if e["event"] == "frame"}  # fmt: skip
        delays = []
        for anomaly_id, listed_at in listed:
            entry = entries.get(int(anomaly_id))
            done = entry and scored.get((entry["source"], entry["frame"]))
            if done and done > loaded:
                delays.append(float(listed_at) - done)
        assert delays and statistics.median(delays) < 2.0, delays

        # a click shows the anomaly's full overlay and its mask (the list moves on meanwhile: retried)
        _until(lambda: _click_a_drawn_anomaly(browser), "an anomaly with its picture")
        _until(lambda: browser.execute_script("return document.getElementById('detail').open"), "the detail view")
        overlay = browser.find_element("id", "detail-overlay")
        _until(lambda: _loaded(browser, overlay) and _loaded(browser, browser.find_element("id", "detail-mask")),
               "the overlay and mask")  # fmt: skip
        assert browser.execute_script("return arguments[0].naturalWidth", overlay) >= 160
        _keep_screenshot(browser, tmp_path, close_detail=True)

        # pause: scoring stops, frames are still captured and counted as skipped; resume: it goes on
        browser.find_element("id", "operator").send_keys("ann")
        _tile(browser, "good").find_element("css selector", "button.steer").click()
        _until(lambda: _tile(browser, "good").get_attribute("data-paused") == "true", "the tile to show paused")
        paused_at, skipped_at = _number(browser, "good", "processed"), _number(browser, "good", "skipped")
        _until(lambda: _number(browser, "good", "skipped") >= skipped_at + 8, "frames skipped while paused")
        assert _number(browser, "good", "processed") <= paused_at + 6  # at most the frames queued before it
        assert "paused" in _tile(browser, "good").find_element("css selector", ".state").text
        _tile(browser, "good").find_element("css selector", "button.steer").click()
        resumed_at = _number(browser, "good", "processed")
        _until(lambda: _number(browser, "good", "processed") >= resumed_at + 5, "scoring to resume")
        pauses = [e for e in _events(out) if e["event"] in ("source_paused", "source_resumed")]
        assert [(e["event"], e["by"]["operator"]) for e in pauses] == [
            ("source_paused", "ann"),
            ("source_resumed", "ann"),
        ]

        # the good camera is switched off: its tile says down, and why
        good.close()
        _until(lambda: "down:" in _tile(browser, "good").find_element("css selector", ".state").text, "a down tile")
        assert "down" in _tile(browser, "good").get_attribute("class").split()
        assert _console_errors(browser) == []
    finally:
        good.close()
        bad.close()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sinks"]["ui"]["written"] > 0


def test_off_localhost_the_browser_logs_in_before_it_can_pause(tiny_detector, tiny_built, tmp_path, browser):
    from test_station_ui import _served

    cam = Burst("cam", 10**9, every_s=0.02)
    with _served(tiny_detector, tiny_built.path, tmp_path, [cam], host="127.0.0.2", token=TOKEN) as running:
        _, _, server, recorder = running
        browser.get(server.url)
        _until(lambda: browser.current_url.endswith("/login"), "the login page")
        refused = browser.execute_async_script(
            "const done = arguments[0];"
            "fetch('/api/sources/cam/pause', {method: 'POST', body: '{}'}).then(r => done(r.status));"
        )
        assert refused == 401 and not cam.paused
        browser.find_element("id", "token").send_keys("not-the-token")
        browser.find_element("id", "login").click()
        _until(lambda: browser.find_element("id", "refused").is_displayed(), "the refusal")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login").click()
        _until(lambda: browser.find_elements("css selector", 'article.tile[data-source="cam"]'), "the page")
        _tile(browser, "cam").find_element("css selector", "button.steer").click()
        _until(lambda: cam.paused, "the pause")
        errors = _console_errors(browser)
        assert all("401" in message for message in errors), errors  # only the refused pause, asked for above
    assert len(recorder.of("source_paused")) == 1


def _answers(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _state(url) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=30) as reply:
        return json.loads(reply.read())


def _click_a_drawn_anomaly(browser) -> bool:
    for image in browser.find_elements("css selector", "#anomalies li img"):
        if _loaded(browser, image):
            image.click()
            return True
    return False


def _loaded(browser, image) -> bool:
    return bool(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))


def _keep_screenshot(browser, tmp_path, close_detail=False):
    """The page with both tiles drawn, for the docs when ZSAD_EDGE_PAGE_SCREENSHOT names a file."""
    if close_detail:
        browser.find_element("id", "close-detail").click()
    for source in ("good", "bad"):
        picture = _tile(browser, source).find_element("css selector", ".picture")
        _until(lambda picture=picture: _loaded(browser, picture), f"{source}'s picture")
    path = tmp_path / "station_page.png"
    assert browser.save_screenshot(str(path))
    if os.environ.get("ZSAD_EDGE_PAGE_SCREENSHOT"):
        shutil.copy(path, os.environ["ZSAD_EDGE_PAGE_SCREENSHOT"])
