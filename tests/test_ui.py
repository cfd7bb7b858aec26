"""The Dagster UI leads with results: a real webserver on the tiny demo run, read through GraphQL
and, where Debian's chromium and chromedriver are installed (``.ci/run`` installs them), in a
real headless browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = os.environ.get("RETRIEVER_FORGE_SCREENSHOTS")  # a folder: keep the browser's screenshots there

LATEST_METADATA = """
query ($key: [String!]!, $partition: String!) {
  assetOrError(assetKey: {path: $key}) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } }
      }
    }
  }
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out.get("errors")
    return out["data"]


@pytest.fixture(scope="module")
def webserver(tiny_demo_run, tmp_path_factory):
    """``dagster-webserver`` on 127.0.0.1 over the tiny run's instance, with this checkout's code location."""
    home, _, result, dagster_home = tiny_demo_run
    assert result.success
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RETRIEVER_FORGE_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    log = (tmp_path_factory.mktemp("webserver") / "webserver.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-m", "retriever_forge.orchestration.definitions",
                             "-d", str(ROOT)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                statuses = _graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
                if statuses["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED":
                    break
            except (OSError, KeyError, IndexError):
                pass
            assert proc.poll() is None, f"dagster-webserver exited; see {log.name}"
            assert time.monotonic() < deadline, f"dagster-webserver did not load the code location in 240 s; see {log.name}"
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _latest_metadata(url: str, asset: str) -> list[dict]:
    data = _graphql(url, LATEST_METADATA, {"key": [asset], "partition": "demo"})
    return data["assetOrError"]["assetMaterializations"][0]["metadataEntries"]


@pytest.mark.slow
def test_graphql_metadata_leads_with_results(webserver):
    board = _latest_metadata(webserver, "benchmark_scores")
    assert board[0]["label"] == "scoreboard" and "hybrid-base" in board[0]["mdStr"]
    labels = [e["label"] for e in board]
    assert labels.index("provenance") > labels.index("queries_moved") and labels[-1] == "manifest"
    curve = _latest_metadata(webserver, "fine_tuned_encoder")
    assert curve[0]["label"] == "training_curve" and curve[0]["mdStr"].startswith("![") and "data:image/png;base64," in curve[0]["mdStr"]
    # hashes appear once, short, in the provenance block; no separate hash entries any more
    assert not {"artifact_hash", "upstream_hashes", "code_version"} & set(labels)


def _browser():
    from scripts.audit_in_browser import chromium_driver

    return chromium_driver(1400, 1100)


def _wait(driver, predicate, seconds=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=1).until(lambda d: predicate(d))


def _click(driver, element) -> None:
    """Dismiss the first-visit dialog if it came up late, then click through JavaScript (a
    backdrop still fading out would intercept a pointer click on a slow machine)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        driver.execute_script("arguments[0].click()", button)
    driver.execute_script("arguments[0].click()", element)


def _open_asset(driver, url: str, asset: str, labels: list[str]) -> list[str]:
    """Open an asset's page, dismiss the first-visit dialog, and return its metadata keys in display order."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/assets/{asset}?partition=demo")

    def shown(d):
        for button in d.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):  # "Join the Dagster community"
            button.click()
        keys = d.execute_script("return [...document.querySelectorAll('td')].map(c => c.innerText.trim())")
        keys = [k for k in keys if k in labels]
        return keys if labels[0] in keys else None

    return _wait(driver, shown)


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian chromium + chromium-driver (.ci/run installs them)",
)
def test_browser_shows_the_scoreboard_first_and_the_loss_plot_as_an_image(webserver, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By

    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    board_labels = [e["label"] for e in _latest_metadata(webserver, "benchmark_scores")]
    curve_labels = [e["label"] for e in _latest_metadata(webserver, "fine_tuned_encoder")]
    driver = _browser()
    try:
        shown = _open_asset(driver, webserver, "benchmark_scores", board_labels)
        assert shown[0] == "scoreboard"
        row = driver.find_element(By.XPATH, "//td[normalize-space()='scoreboard']/..")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", row)
        # the scoreboard renders as a table, inline, with every system
        # the UI folds a Markdown entry behind "Show Markdown"; opened, the scoreboard is a table with every system
        _click(driver, row.find_element(By.XPATH, ".//a[contains(., 'Show Markdown')]"))
        cells = _wait(driver, lambda d: d.execute_script(
            "const cells = [...document.querySelectorAll('[role=dialog] table td')].map(c => c.innerText.trim());"
            "return cells.length ? cells : null;"))  # fmt: skip
        time.sleep(1)  # the dialog fades in: a screenshot at once catches it half transparent
        driver.save_screenshot(str(shots / "benchmark_scores.png"))
        assert {"bm25", "base", "hybrid-base", "fine-tuned", "hybrid"} <= set(cells), cells

        shown = _open_asset(driver, webserver, "fine_tuned_encoder", curve_labels)
        assert shown[0] == "training_curve"
        row = driver.find_element(By.XPATH, "//td[normalize-space()='training_curve']/..")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", row)
        _click(driver, row.find_element(By.XPATH, ".//a[contains(., 'Show Markdown')]"))
        sizes = _wait(driver, lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png'));"
            "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.map(i => [i.naturalWidth, i.naturalHeight]) : null;"))  # fmt: skip
        time.sleep(1)
        driver.save_screenshot(str(shots / "fine_tuned_encoder.png"))
        assert all(w > 100 and h > 50 for w, h in sizes)  # a decoded PNG, not a broken-image icon
    finally:
        driver.quit()
