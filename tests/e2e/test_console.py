"""The console of `dativo serve` (issue 22, item 2), driven in Debian's Chromium through
Selenium and chromedriver by clicking: the jobs page links to a job's page; it shows the run
history, a chart of rows per run, the selected run's log, the committed state, local times and
grouped digits; "Run now" starts a run that is seen running (rows so far, elapsed) and "Cancel"
cancels it, with the API token typed into the page — and refused without it. Screenshots are
saved beside the test's files (tmp_path) for a person to look at."""
import os
import shutil
import time

import pytest

from conftest import write_csvs
from test_serve import TOKEN, Serve, count, slow_job, wait_until


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "scripts/test installs Debian's chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(a)
    # Europe/Berlin in the browser: times must show in its zone, not UTC.
    svc = Service(driver_bin, env={**os.environ, "TZ": "Europe/Berlin"})
    d = webdriver.Chrome(service=svc, options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def test_console_by_clicking(tmp_path, browser):
    from selenium.webdriver.common.by import By
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_csvs(tmp_path / "data", 3, 1500)
    (jobs / "files.yaml").write_text(f"""name: files
description: CSV files every two seconds
source: {{reader: file, config: {{path: "{tmp_path}/data/*.csv"}}}}
target: {{writer: parquet, config: {{path: "{tmp_path}/lake/files"}}}}
schedule: "*/2 * * * * *"
checkpoint: {{rows: 1000}}
""")
    slow_job(jobs / "slow.yaml", "slow_manual", tmp_path / "lake/slow")
    s = Serve(tmp_path, jobs)
    b = browser
    try:
        wait_until(lambda: (s.metric("dativo_runs_total", "files") or 0) >= 2, what="2 runs of files")
        b.get(s.base + "/")
        row = b.find_element(By.CSS_SELECTOR, 'tr[data-job="files"]')
        # Digits grouped in the browser; times in its zone (the script rewrote them).
        assert "4,500" in row.text, row.text
        times = row.find_elements(By.TAG_NAME, "time")
        assert times and all("UTC" not in t.text and t.get_attribute("title").endswith("Z") for t in times), \
            [(t.text, t.get_attribute("title")) for t in times]
        # The browser's zone (Europe/Berlin, UTC+1 in December): the hour differs from UTC's.
        import datetime
        iso = times[0].get_attribute("title")
        utc = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        berlin = utc + datetime.timedelta(hours=1)
        assert berlin.strftime("%-I:%M") in times[0].text or berlin.strftime("%H:%M") in times[0].text, \
            (times[0].text, iso)
        assert b.find_element(By.CLASS_NAME, "tz").text == "Europe/Berlin"
        b.save_screenshot(str(tmp_path / "console-jobs.png"))

        # Click through to the job's page.
        row.find_element(By.LINK_TEXT, "files").click()
        wait_until(lambda: b.current_url.endswith("/jobs/files"), what="the job page")
        assert b.find_element(By.ID, "job-name").text == "files"
        runs = b.find_elements(By.CSS_SELECTOR, "#runs tr.run")
        assert len(runs) >= 2, b.page_source[:3000]
        assert "succeeded" in runs[0].text and "4,500" in runs[-1].text, [r.text for r in runs]
        bars = b.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
        assert len(bars) == len(runs) and bars[0].get_attribute("data-rows") == "4500"
        # The chart is drawn: the first run's bar has a height.
        assert float(bars[0].get_attribute("height")) > 50
        assert '"files"' in b.find_element(By.ID, "state").text
        newest = runs[0].get_attribute("data-run")
        assert f"run {newest} of job `files` started" in b.find_element(By.ID, "log-text").text
        # The first run's log by clicking its row's link: it loaded the 4,500 rows.
        oldest = runs[-1].get_attribute("data-run")
        runs[-1].find_element(By.LINK_TEXT, "log").click()
        wait_until(lambda: "run=" in b.current_url, what="the run's log")
        assert b.find_element(By.CSS_SELECTOR, "#runs tr.sel").get_attribute("data-run") == oldest
        log = b.find_element(By.ID, "log-text").text
        assert "attempt 1" in log and "committed 1500 rows" in log and "succeeded: 4500 rows" in log, log
        b.save_screenshot(str(tmp_path / "console-job.png"))

        # The slow manual job: Run now without the token is refused, with it it starts.
        b.get(s.base + "/jobs/slow_manual")
        assert "No runs yet" in b.page_source
        b.execute_script("sessionStorage.clear()")
        b.get(s.base + "/jobs/slow_manual")
        b.find_element(By.ID, "run-now").click()
        wait_until(lambda: "refused (HTTP 401)" in b.find_element(By.ID, "msg").text, what="a refusal")
        assert s.jobs()["slow_manual"]["running"] is None
        b.get(s.base + "/jobs/slow_manual")
        b.find_element(By.ID, "token").send_keys(TOKEN)
        b.find_element(By.ID, "run-now").click()
        wait_until(lambda: "started — run" in b.find_element(By.ID, "msg").text, what="the run to start")
        run_id = b.find_element(By.ID, "msg").text.rsplit(" ", 1)[1]
        wait_until(lambda: s.jobs()["slow_manual"]["running"] == run_id, what="the run in the API")
        wait_until(lambda: (s.jobs()["slow_manual"]["running_committed"] or 0) >= 40, what="commits")
        # The page (reloaded): running, with rows so far and elapsed time, and Cancel.
        import re
        b.get(s.base + "/jobs/slow_manual")
        status = b.find_element(By.ID, "status").text
        m = re.search(r"running for (\d+) s\s+([\d,]+) rows read, ([\d,]+) committed", status)
        assert m and int(m.group(3).replace(",", "")) >= 40 and int(m.group(2).replace(",", "")) >= 40, status
        assert b.find_elements(By.ID, "cancel"), b.page_source[:2000]
        b.save_screenshot(str(tmp_path / "console-running.png"))
        b.find_element(By.ID, "cancel").click()  # the token is remembered for the session
        wait_until(lambda: "cancelling" in b.find_element(By.ID, "msg").text, what="cancel accepted")
        wait_until(lambda: s.jobs()["slow_manual"]["running"] is None, timeout=30, what="the run to end")
        run = s.get(f"/api/runs/{run_id}")[1]
        assert run["status"] == "cancelled"
        assert count(tmp_path / "lake/slow") == (run["rows"], run["rows"])
        b.get(s.base + "/jobs/slow_manual")
        first = b.find_element(By.CSS_SELECTOR, "#runs tr.run")
        assert "cancelled" in first.text and first.get_attribute("data-run") == run_id
        assert b.find_elements(By.ID, "cancel") == []
        b.save_screenshot(str(tmp_path / "console-cancelled.png"))
        for shot in ["console-jobs.png", "console-job.png", "console-running.png", "console-cancelled.png"]:
            assert (tmp_path / shot).stat().st_size > 10000, shot
        # No such job: a page that says so.
        b.get(s.base + "/jobs/nope")
        assert "No job" in b.page_source
    finally:
        assert s.stop() == 0
