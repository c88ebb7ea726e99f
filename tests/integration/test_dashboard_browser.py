"""The dashboard in a real headless browser: Debian's chromium driven by Selenium
through /usr/bin/chromedriver (Selenium Manager downloads nothing).

A real node (``sprawl_node``), a topic published to over HTTP, then the page:
it must show the topic and its message count, pick up more messages and a
non-zero publish rate without a reload (the SSE feed), list the node alive,
log no JavaScript error, and leave a screenshot under the test's tmp_path.

Every wait is a bounded poll of the DOM (WebDriverWait); the browser is quit
in a ``finally``.  Without chromium the test skips, except under CI (any
truthy ``CI``) where it fails: CI's .ci/run installs chromium and
chromium-driver with apt (:func:`harness.require_tools`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from harness import NodeProcess, require_tools

CHROMIUM = os.environ.get("SPRAWL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SPRAWL_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 20.0  # seconds: the bound on every wait for the page
TIMEOUT = 10.0  # seconds for one HTTP request to the node
TOPIC = "orders.eu-west_1"


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    require_tools(missing, "apt-get install -y chromium chromium-driver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless chromium with a fresh profile, quit (and its profile removed) afterwards."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sprawl-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--disable-extensions",
        "--window-size=1440,1400",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=opts)
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        try:
            if driver is not None:
                driver.quit()
            else:
                service.stop()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def _publish(url: str, topic: str, n: int) -> None:
    msgs = [{"payload": f"order {i}", "key": f"k{i}"} for i in range(n)]
    r = requests.post(f"{url}/v1/topics/{topic}/messages", json={"messages": msgs}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text


def _cell(driver: Any, selector: str) -> str:
    """The text of the first element matching ``selector``, or "" if there is none.

    Read in one script call: the page rebuilds its tables on every snapshot, so
    a WebElement found first and read later may already be stale.
    """
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : '';", selector
    )
    return str(text)


def _cells(driver: Any, selector: str) -> list[str]:
    """The texts of every element matching ``selector`` (one script call)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim());", selector
    )
    return [str(t) for t in texts]


def _wait_for(driver: Any, what: str, predicate: Any) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: predicate(d))
    except TimeoutException:
        body = _cell(driver, "body")[:3000]
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}; the page shows:\n{body}") from None


def test_dashboard_shows_live_topics_members_and_rates(
    sprawl_node: NodeProcess, browser: Any, tmp_path: Path
) -> None:
    url = sprawl_node.url
    # A topic with a name that needs escaping would be refused by the name rule;
    # the dashboard still renders names with textContent only.
    r = requests.put(f"{url}/v1/topics/{TOPIC}", json={"partitions": 3}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    r = requests.put(f"{url}/v1/topics/{TOPIC}/groups/billing", json={"start": "earliest"}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    _publish(url, TOPIC, 25)
    _publish(url, "audit", 7)

    browser.get(url + "/")
    row = f'#topics tr[data-topic="{TOPIC}"]'
    _wait_for(browser, "the topic's message count", lambda d: _cell(d, row + " td.messages") == "25")
    assert _cell(browser, row + " td.name") == TOPIC

    # The node itself is listed, alive.
    state = _wait_for(browser, "the member list", lambda d: _cell(d, "#members tbody tr .state"))
    assert state == "alive", state
    assert _cell(browser, "#k-members").startswith("1 / 1")
    # Raft's fault tolerance: a lone node is its one voter, at its target, and survives no failure.
    _wait_for(browser, "the fault tolerance card", lambda d: _cell(d, "#k-ft") == "0")
    assert _cell(browser, "#k-ft-sub") == "1 of 1 voters", _cell(browser, "#k-ft-sub")

    # Live: more messages show up without a reload (the page's own marker stays).
    browser.execute_script("window.__sprawlNoReload = 1;")
    seen = int(browser.execute_script("return Number(document.body.dataset.snapshots || 0);"))
    _publish(url, TOPIC, 40)
    _wait_for(browser, "the count to update live", lambda d: _cell(d, row + " td.messages") == "65")

    def rate_positive(d: Any) -> bool:
        text = _cell(d, row + " td.pub-rate")
        try:
            return float(text.replace(",", "").rstrip("kM")) > 0
        except ValueError:
            return False

    _wait_for(browser, "a non-zero publish rate", rate_positive)
    assert browser.execute_script("return window.__sprawlNoReload;") == 1, "the page reloaded"
    assert int(browser.execute_script("return Number(document.body.dataset.snapshots);")) > seen
    # The consumer group's lag is the messages it has not acked.
    lag = '#groups tr[data-group="billing"] td.lag'
    _wait_for(browser, "the group's lag", lambda d: _cell(d, lag) == "65")
    assert _cell(browser, "#live") == "live"
    assert _cell(browser, "#ready") == "ready"
    # A healthy node names no fault.
    assert _cells(browser, "#faults tbody tr") == []
    assert browser.execute_script(
        "return !document.getElementById('faults-empty').classList.contains('hidden');"
    )
    # Partitions: three rows for the topic with their high watermarks summing to 65.
    hws = [int(t.replace(",", "")) for t in _cells(browser, f'#partitions tr[data-topic="{TOPIC}"] td.hw')]
    assert len(hws) == 3 and sum(hws) == 65, hws

    # Let the chart draw a few points, then keep the picture.
    more = int(browser.execute_script("return Number(document.body.dataset.snapshots);")) + 2
    _publish(url, "audit", 12)
    _wait_for(
        browser,
        "two more snapshots",
        lambda d: int(d.execute_script("return Number(document.body.dataset.snapshots);")) >= more,
    )
    _keep_picture_and_check_console(browser, tmp_path / "dashboard.png", "SPRAWL_DASHBOARD_SCREENSHOT")


def _keep_picture_and_check_console(browser: Any, shot: Path, env: str) -> None:
    """A screenshot of the whole page (copied to ``$env`` when set), and no JavaScript error logged."""
    height = int(browser.execute_script("return document.documentElement.scrollHeight;"))
    browser.set_window_size(1440, min(height + 140, 4000))
    assert browser.save_screenshot(str(shot)), "screenshot failed"
    print(f"dashboard screenshot: {shot}")
    keep = os.environ.get(env)
    if keep:
        shutil.copyfile(shot, keep)
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, json.dumps(errors, indent=2)


def test_dashboard_names_a_fault_with_its_next_step(sprawl_nodes: Any, browser: Any, tmp_path: Path) -> None:
    """The faults panel: a node whose disk budget (10 MB) is exceeded shows the fault
    ``disk_budget_exceeded`` -- severity, the partitions it touches, the next step --
    within 5 s of the fault, live (no reload)."""
    import time

    from harness import scaled

    node = sprawl_nodes("--disk-budget", "10MB")
    url = node.url
    r = requests.put(f"{url}/v1/topics/big", json={"partitions": 2}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    browser.get(url + "/")
    _wait_for(browser, "the first snapshot", lambda d: _cell(d, "#live") == "live")
    assert _cells(browser, "#faults tbody tr") == []
    browser.execute_script("window.__sprawlNoReload = 1;")
    blob = "x" * 500_000
    t0 = None
    for i in range(30):  # 30 x 2 MB at most; the budget is 10 MB
        got = requests.post(
            f"{url}/v1/topics/big/messages",
            json={"messages": [{"payload": blob, "key": f"k{i}{j}"} for j in range(4)]},
            timeout=TIMEOUT,
        )
        if got.status_code == 507:
            t0 = time.monotonic()
            break
        assert got.status_code == 200, got.text
    assert t0 is not None, "the node never refused a publish past its 10 MB budget"
    row = '#faults tr[data-code="disk_budget_exceeded"]'
    _wait_for(browser, "the disk fault", lambda d: _cell(d, row + " td.code") == "disk_budget_exceeded")
    took = time.monotonic() - t0
    assert took <= scaled(5.0), f"named {took:.1f} s after the first 507"
    assert _cell(browser, row + " .pill") == "critical"
    assert _cell(browser, row + " td.parts") == "big/0, big/1"
    assert "--disk-budget" in _cell(browser, row + " td.what .next")
    assert browser.execute_script("return window.__sprawlNoReload;") == 1, "the page reloaded"
    shot = tmp_path / "dashboard-faults.png"
    assert browser.save_screenshot(str(shot)), "screenshot failed"
    print(f"dashboard screenshot: {shot}")


#: A model that warms up in seconds: one-second steps, no seasons.
FAST_FORECAST = ("--forecast-interval", "1s", "--forecast-step", "1s", "--forecast-seasons", "none")


def test_dashboard_draws_the_forecast_band_and_lists_a_surge(
    sprawl_nodes: Any, browser: Any, tmp_path: Path
) -> None:
    """With traffic flowing, the throughput chart draws the topic's forecast
    band (the canvas names the topics whose band it drew, the topics table
    shows the expected interval); a sudden surge is listed under "Traffic
    anomalies" and marked on the chart."""
    node: NodeProcess = sprawl_nodes(*FAST_FORECAST)
    url = node.url
    topic = "clicks"
    r = requests.put(f"{url}/v1/topics/{topic}", json={"partitions": 2}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    browser.get(url + "/")
    _wait_for(browser, "the page's first snapshot", lambda d: _cell(d, "#live") == "live")
    assert _cell(browser, "#anomalies-empty") == "No traffic anomalies."

    def band_drawn(d: Any) -> bool:
        _publish(url, topic, 20)  # a steady trickle while the model warms up
        bands = str(d.execute_script("return document.getElementById('chart').dataset.bands || '';"))
        expected = _cell(d, f'#topics tr[data-topic="{topic}"] td.forecast')
        return topic in bands.split(",") and "\u2013" in expected  # "low, en dash, high"

    _wait_for(browser, "the forecast band of the topic", band_drawn)
    keys = _cells(browser, "#legend .key")
    assert "forecast" in keys, keys

    def surge_listed(d: Any) -> bool:
        _publish(url, topic, 500)  # ten times the trickle and more
        rows = _cells(d, '#anomalies tr[data-kind="surge"] td.series')
        marks = int(d.execute_script("return Number(document.getElementById('chart').dataset.marks || 0);"))
        return f"topic {topic} published" in rows and marks >= 1

    _wait_for(browser, "a surge in the anomaly list and on the chart", surge_listed)
    _keep_picture_and_check_console(
        browser, tmp_path / "dashboard-forecast.png", "SPRAWL_DASHBOARD_FORECAST_SCREENSHOT"
    )


def test_dashboard_lists_pipelines_with_their_lag(sprawl_node: NodeProcess, browser: Any) -> None:
    """The pipelines panel: a declared pipeline with its source, target, filter and
    lag, which falls to 0 as the pipeline catches up (live, no reload), and its
    ``on_reject`` -- or why it is stalled on a record its target can never take."""
    url = sprawl_node.url
    for name in ("payments", "payments.big"):
        r = requests.put(f"{url}/v1/topics/{name}", json={"partitions": 2}, timeout=TIMEOUT)
        assert r.status_code in (200, 201), r.text
    browser.get(url + "/")
    _wait_for(
        browser, "the empty pipelines note", lambda d: _cell(d, "#pipelines-empty").startswith("No pipelines")
    )
    _publish(url, "payments", 30)
    body = {"source": "payments", "target": "payments.big", "filter": "key == 'k3'"}
    r = requests.put(f"{url}/v1/pipelines/big", json=body, timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    row = '#pipelines tr[data-pipeline="big"]'
    _wait_for(browser, "the pipeline's row", lambda d: _cell(d, row + " td.name") == "big")
    assert _cells(browser, row + " td")[1:4] == ["payments", "payments.big", "key == 'k3'"]
    _wait_for(browser, "the pipeline's lag to reach 0", lambda d: _cell(d, row + " td.lag") == "0")
    assert _cell(browser, row + " td.reject") == "stall"
    assert browser.execute_script(
        "return document.getElementById('pipelines-empty').classList.contains('hidden');"
    )
    # a pipeline whose target can never take a record says why it is stalled
    r = requests.put(
        f"{url}/v1/topics/payments.tiny", json={"partitions": 1, "max_message_bytes": 5}, timeout=TIMEOUT
    )
    assert r.status_code in (200, 201), r.text
    r = requests.put(
        f"{url}/v1/pipelines/tiny", json={"source": "payments", "target": "payments.tiny"}, timeout=TIMEOUT
    )
    assert r.status_code == 201, r.text
    stalled = '#pipelines tr[data-pipeline="tiny"] td.reject.stalled'
    _wait_for(browser, "the stalled pipeline's reason", lambda d: "max_message_bytes 5" in _cell(d, stalled))
    assert _cell(browser, stalled).startswith("stalled: source partition")
