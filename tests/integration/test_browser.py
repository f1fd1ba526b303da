"""Seen in a real browser: Flower's tasks page and the API's ``/docs`` in headless Chromium.

Debian's ``chromium`` and ``chromedriver`` (.ci/run installs them); the tests are skipped, with
the reason, where either is absent. Nothing is fetched from the internet: Flower serves its own
scripts, and the API serves Swagger UI's (:mod:`tasks.http.app`).

The screenshots go to the test's tmp dir; with ``RECORDER_SCREENSHOT_DIR=docs`` they also
refresh the README's pictures.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import tasks
from tests.conftest import WorkerProcess, finished, wait_for
from tests.integration.test_flower import (
    PASSWORD,
    USER,
    FlowerProcess,
    compose_flower_env,
    task_info,
    wait_until_flower_listens,
)
from tests.integration.test_http_api import api_url  # noqa: F401 (a fixture)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]
StartWorker = Callable[..., WorkerProcess]
PAGE_TIMEOUT_S = 20.0
#: a room the sandbox knows (its job succeeds) and one it answers 404 for (its job fails)
ROOMS = ("room-seen", "missing-seen")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    # root in a container: Chromium's own sandbox needs user namespaces it may not have
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER or ""))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture
def flower(recorder_env: dict[str, str], tmp_path: Path) -> Iterator[FlowerProcess]:
    """Flower as docker-compose.yml sets it up (its columns show the room), with basic auth."""
    env = {**recorder_env, **compose_flower_env(), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    process = FlowerProcess(env, tmp_path / "flower.log")
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if target := os.environ.get("RECORDER_SCREENSHOT_DIR"):
        driver.save_screenshot(str(Path(target) / name))


def in_state(flower: FlowerProcess, task_id: str, state: str) -> bool:
    """Whether Flower's API has the task in ``state`` (a ``wait_for`` predicate)."""
    info = task_info(flower, task_id)
    return info is not None and info["state"] == state


def row_state(driver: webdriver.Chrome, room_id: str) -> str | None:
    """The state badge of the tasks table's row that shows ``room_id`` (in whichever column);
    None before it shows."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr"):
        if room_id in row.text:
            return row.find_element(By.CSS_SELECTOR, ".badge").text or None
    return None


def test_flower_tasks_page_shows_a_succeeded_and_a_failed_room(
    flower: FlowerProcess, start_worker: StartWorker, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    # Given a worker, Flower listening, and a job for each room, finished in Flower's view too
    start_worker()
    wait_until_flower_listens(flower)
    jobs = [tasks.enqueue_recording(room).id for room in ROOMS]
    done = wait_for(lambda: finished(jobs), timeout_s=20)
    assert [j.status.value for j in done or []] == ["succeeded", "failed"]
    succeeded, failed = jobs
    wait_for(
        lambda: in_state(flower, succeeded, "SUCCESS") and in_state(flower, failed, "FAILURE"),
        timeout_s=10,
        interval_s=0.2,
        what="both states in Flower's API",
    )
    # When Flower's tasks page is opened, with the basic auth on every request it makes
    browser.execute_cdp_cmd("Network.enable", {})
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
    try:
        browser.get(f"{flower.url}/tasks")
        # Then the table, filled by script from /tasks/datatable, shows each room's state
        wait_for(
            lambda: all(row_state(browser, room) for room in ROOMS),
            timeout_s=PAGE_TIMEOUT_S,
            what="both rooms in Flower's tasks table",
        )
        assert [row_state(browser, room) for room in ROOMS] == ["SUCCESS", "FAILURE"]
        screenshot(browser, tmp_path, "flower-tasks.png")
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_api_docs_render_the_recordings_routes_with_no_internet(
    api_url: str,  # noqa: F811 (the fixture imported above)
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    # When /docs is opened: Swagger UI's scripts, served by the app, render the operations
    browser.get(f"{api_url}/docs")

    def operations() -> list[str]:
        found = browser.find_elements(By.CSS_SELECTOR, ".opblock .opblock-summary-path")
        return [element.text for element in found]

    paths = wait_for(operations, timeout_s=PAGE_TIMEOUT_S, what="Swagger UI's operations")
    # Then every /v1 route is there
    expected = {"/v1/recordings", "/v1/recordings/{job_id}", "/v1/recordings/{job_id}/cancel"}
    assert expected | {"/v1/stops"} <= set(paths), paths
    screenshot(browser, tmp_path, "api-docs.png")
