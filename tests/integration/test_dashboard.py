"""The dashboard in a real headless browser (Debian's chromium and chromium-driver, Selenium): it
shows functions, dead jobs, retries, schedules and connections, and a click on "Replay" puts a
dead job back on its queue.

With SHARDGEAR_DASHBOARD_PNG=PATH the test also saves its screenshot there (docs/dashboard.png,
shown in the README, is made so)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gearclient import Conn, parse_status, submit, wait_for
from tests.integration.http_helpers import Workers, start_http_server
from tests.integration.test_retries import retry_config

pytestmark = [pytest.mark.shardgear_only, pytest.mark.slow]

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.chromium.service import ChromiumService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

SCHED = 35


def browser() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1500", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=ChromiumService(CHROMEDRIVER))


def fail(job: Any) -> None:
    job.sendWorkException(b"ValueError: image is truncated (offset 4096)")


def complete(job: Any) -> None:
    time.sleep(0.01)
    job.sendWorkComplete(b"ok")


def test_the_dashboard_shows_the_server_and_replays_a_dead_job(
    start_server, tmp_path: Path
) -> None:
    srv, http = start_http_server(
        start_server,
        *retry_config(
            tmp_path,
            {
                "thumbnail": 'attempts = 2, backoff = "fixed", delay = "0.2s", jitter = 0',
                "fetch-feed": 'attempts = 5, backoff = "exponential", delay = "5m", jitter = 0',
            },
        ),
    )
    workers = Workers(srv.address)
    stop = threading.Event()
    driver = None
    try:
        workers.add("resize", complete)
        workers.add("thumbnail", fail)
        workers.add("fetch-feed", lambda job: job.sendWorkFail())
        with Conn(srv.address) as client:
            for n in range(3):
                submit(client, "thumbnail", f"photo-{n}.jpg", unique=f"photo-{n}", bg=True)
            submit(client, "fetch-feed", "https://example.org/feed", unique="feed-1", bg=True)
            for prio, count in (("high", 2), ("normal", 7), ("low", 3)):
                for n in range(count):
                    submit(client, "send-email", f"mail {n}", prio=prio, bg=True)
            client.send(SCHED, "nightly-report", "daily", "0", "6", "*", "*", "*", "{}")
            client.expect(8)  # JOB_CREATED

        def load() -> None:  # some throughput for the sparklines
            with Conn(srv.address) as c:
                while not stop.is_set():
                    submit(c, "resize", "img", bg=True)
                    time.sleep(0.02)

        feeder = threading.Thread(target=load, daemon=True)
        feeder.start()
        admin = Conn(srv.address)

        def dead_rows() -> list[str]:
            text = admin.admin("show dead jobs")
            return [line for line in text.splitlines() if line != "."]

        wait_for(lambda: len(dead_rows()) == 3, timeout=20, what="three dead thumbnails")
        workers.workers[1].shutdown()  # no thumbnail worker: a replayed job stays queued

        driver = browser()
        driver.get(f"http://{http}/_shardgear/")
        wait_for(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#dead tr[data-dead-id]")) == 3,
            timeout=20,
            what="the dead jobs on the page",
        )
        page = driver.find_element(By.TAG_NAME, "body").text
        for text in ("resize", "send-email", "nightly-report", "0 6 * * *", "fetch-feed",
                     "waiting", "image is truncated"):  # fmt: skip
            assert text in page, text
        email = driver.find_element(By.CSS_SELECTOR, '#functions tr[data-function="send-email"]')
        assert [c.text for c in email.find_elements(By.TAG_NAME, "td")][1:4] == ["2", "7", "3"]
        # sparklines: the sampler needs two samples (2 s apart) for a rate
        wait_for(
            lambda: driver.find_elements(
                By.CSS_SELECTOR, '#functions tr[data-function="resize"] svg polyline'
            ),
            timeout=20,
            what="the throughput sparkline of resize",
        )
        target = os.environ.get("SHARDGEAR_DASHBOARD_PNG")
        time.sleep(30 if target else 2)  # more points for the README's picture
        png = driver.get_screenshot_as_png()
        assert png.startswith(b"\x89PNG")
        (Path(target) if target else tmp_path / "dashboard.png").write_bytes(png)

        # click "Replay" on the newest dead job
        row = driver.find_element(By.CSS_SELECTOR, "#dead tr[data-dead-id]")
        dead_id = row.get_attribute("data-dead-id")
        row.find_element(By.CSS_SELECTOR, 'button[data-action="replay"]').click()
        wait_for(lambda: len(dead_rows()) == 2, timeout=10, what="the replay to empty its row")
        assert all(not line.startswith(f"{dead_id}\t") for line in dead_rows())
        wait_for(
            lambda: parse_status(admin.admin("status")).get("thumbnail", [0])[0] == 1,
            timeout=10,
            what="the replayed job on the thumbnail queue",
        )
        wait_for(
            lambda: not driver.find_elements(By.CSS_SELECTOR, f'tr[data-dead-id="{dead_id}"]'),
            timeout=10,
            what="the page to drop the replayed row",
        )
        admin.close()
    finally:
        stop.set()
        if driver is not None:
            driver.quit()
        workers.stop()
