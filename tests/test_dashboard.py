"""The ZenML dashboard shows a run: local server, the quickstart on a small slice, a real headless Chromium.

Needs the Debian packages `chromium` and `chromium-driver` (.ci/run installs them) and the
`selenium` package. Screenshots go to the test's temporary folder, or to
LLM_LORA_SCREENSHOT_DIR when it is set.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_loopback_port, run_tree

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FRAME = "iframe[title='Secure HTML Content']"  # the dashboard's frame for an HTML visualization
SHEET = "[role='dialog']"  # an artifact's side sheet
VISUALIZATION_TAB = "//*[@role='dialog']//button[@role='tab'][normalize-space()='Visualization']"


def small_quickstart(path: Path) -> Path:
    """configs/quickstart.yaml on a small slice: a few rows, a few steps, validation loss on the way."""
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["data"].update(max_train_rows=24, max_validation_rows=8, max_test_rows=6)
    config["training"].update(max_steps=4, logging_steps=1, eval_steps=2)
    config["evaluation"].update(batch_size=6)
    config["registry"]["model_name"] = "dashboard-check"
    path.write_text(yaml.safe_dump(config))
    return path


def skip_first_visit_survey(base_url: str) -> None:
    """Answer the dashboard's first-visit survey for the default user, as a first visitor would."""
    body = json.dumps({"email_opted_in": False, "user_metadata": {"finished_onboarding_survey": True}}).encode()
    request = urllib.request.Request(f"{base_url}/api/v1/current-user", data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["body"]["email_opted_in"] is False


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1920,1080"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


def click_when_free(wait, locator) -> None:
    """Click what `locator` finds once nothing covers it (a side sheet still sliding in covers its own tabs)."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.support import expected_conditions as ec

    def clicked(driver) -> bool:
        try:
            ec.element_to_be_clickable(locator)(driver).click()
        except (ElementClickInterceptedException, StaleElementReferenceException, AttributeError):
            return False  # covered, re-rendered or not clickable yet: try again
        return True

    wait.until(clicked)


def open_visualization(driver, artifact_node_id: str, wait):
    """Open an artifact's side sheet from the run graph, show its Visualization tab, enter the HTML frame."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

    click_when_free(wait, (By.CSS_SELECTOR, f".react-flow__node[data-id='{artifact_node_id}'] button"))
    click_when_free(wait, (By.XPATH, VISUALIZATION_TAB))

    # HTML visualizations wait behind a "Load Preview" confirmation, as they do for a user. The dashboard
    # remembers a confirmation by visualization index while the page lives, so a later artifact may show its
    # preview straight away: click the button when it is there, go on when the frame is.
    def frame_shown(driver):
        frames = driver.find_elements(By.CSS_SELECTOR, FRAME)
        if frames:
            return frames[0]
        # A click that landed while the sheet was still rendering leaves it on its Overview tab: click again.
        for tab in driver.find_elements(By.XPATH, VISUALIZATION_TAB):
            try:
                if tab.get_attribute("aria-selected") != "true":
                    tab.click()
                    return False
            except (ElementClickInterceptedException, StaleElementReferenceException):
                return False
        try:
            ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Load Preview']"))(driver).click()
        except (ElementClickInterceptedException, StaleElementReferenceException, AttributeError):
            pass
        return False

    driver.switch_to.frame(wait.until(frame_shown))


def close_sheet(driver):
    """Close the artifact's side sheet and wait until it is gone, so the next sheet shows its own."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.switch_to.default_content()
    deadline = time.monotonic() + 60
    while driver.find_elements(By.CSS_SELECTOR, FRAME):
        assert time.monotonic() < deadline, "the artifact side sheet did not close on Escape"
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        time.sleep(1)
    # The sheet slides out after its frame is gone; until it is unmounted its tabs are still clickable and a
    # click meant for the next sheet's Visualization tab can land on them.
    while driver.find_elements(By.CSS_SELECTOR, SHEET):
        assert time.monotonic() < deadline, "the artifact side sheet stayed on the page after Escape"
        time.sleep(0.2)


def check_dashboard(driver, run_url: str, shots: Path) -> None:
    """The run page shows every step completed; the reports render in their Visualization tabs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 90)
    driver.get(run_url)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".react-flow__node")))
    # The graph opens zoomed in on its first step and draws only what is in view: fit it to the window.
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Fit view']"))).click()
    wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, ".react-flow__node[data-id='promote_model/outputs/step_output/run_report']")))
    steps = {node.get_attribute("data-id"): node.text for node in
             driver.find_elements(By.CSS_SELECTOR, ".react-flow__node-step")}
    for step in ("prepare_data", "preflight_report", "evaluate_base", "evaluate_few_shot", "train_lora",
                 "evaluate_finetuned", "compare_models", "worth_it_report", "promote_model"):
        assert f"step/{step}" in steps, sorted(steps)
    assert "Execution failed" not in " ".join(steps.values())
    progress = driver.find_element(By.TAG_NAME, "body").text
    assert "completed" in progress.lower() and "Failed\n0" in progress, progress[-1500:]
    driver.save_screenshot(str(shots / "dashboard-run.png"))

    # The run report: the loss curve with a point per logged step, the metric table with base and finetuned.
    open_visualization(driver, "promote_model/outputs/step_output/run_report", wait)
    curve = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg#loss-curve")))
    assert curve.is_displayed() and curve.size["height"] > 100
    lines = [line.get_attribute("points").split() for line in curve.find_elements(By.TAG_NAME, "polyline")]
    assert [len(points) for points in lines] == [4, 2], lines  # a loss per step; validation at steps 2 and 4
    table = driver.find_element(By.CSS_SELECTOR, "table#metrics")
    assert table.is_displayed()
    header = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert header[:3] == ["metric", "base", "finetuned"], header
    metric_rows = {row.find_elements(By.TAG_NAME, "td")[0].text for row in
                   table.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert "mean_field_accuracy" in metric_rows, metric_rows
    assert driver.find_element(By.ID, "decision").text.startswith("Stage:")
    driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.XPATH, "//h3[normalize-space()='Loss']"))
    driver.switch_to.default_content()
    driver.save_screenshot(str(shots / "dashboard-run-report.png"))
    close_sheet(driver)

    # The other reports render too: preflight, per-example comparison, worth it.
    open_visualization(driver, "preflight_report/outputs/step_output/preflight_report", wait)
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h2"), "Preflight report"))
    assert "train" in driver.find_element(By.TAG_NAME, "body").text
    close_sheet(driver)
    open_visualization(driver, "compare_models/outputs/step_output/model_comparison", wait)
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h2"), "Base vs finetuned"))
    assert wait.until(ec.presence_of_element_located((By.TAG_NAME, "table"))).is_displayed()
    close_sheet(driver)
    open_visualization(driver, "worth_it_report/outputs/step_output/worth_it_report", wait)
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h2"), "Was finetuning worth it?"))
    verdict = driver.find_element(By.TAG_NAME, "body").text
    assert "zero-shot" in verdict and "2-shot" in verdict, verdict[:500]
    driver.switch_to.default_content()
    driver.save_screenshot(str(shots / "dashboard-worth-it.png"))


@pytest.mark.pipeline
@pytest.mark.browser
@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="needs the Debian packages chromium and chromium-driver")
def test_dashboard_shows_the_run_and_its_reports(tmp_path):
    shots = Path(os.environ.get("LLM_LORA_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               ZENML_AUTO_OPEN_DASHBOARD="false")
    zenml = str(Path(sys.executable).parent / "zenml")
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    started = subprocess.run([zenml, "login", "--local", "--port", str(port)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        run = run_tree([sys.executable, "run.py", "--config", str(small_quickstart(tmp_path / "run.yaml"))],
                       cwd=REPO, env=env, timeout=1500)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # The run summary names the run's dashboard page on this server.
        links = re.findall(r"Dashboard: (\S+)", run.stdout)
        assert links and links[0].startswith(base_url + "/"), run.stdout[-2000:]
        skip_first_visit_survey(base_url)

        driver = browser()
        try:
            check_dashboard(driver, links[0], shots)
        except Exception:
            driver.switch_to.default_content()
            driver.save_screenshot(str(shots / "dashboard-failure.png"))
            print("dashboard at failure:", driver.current_url, shots / "dashboard-failure.png")
            raise
        finally:
            driver.quit()
    finally:
        stopped = subprocess.run([zenml, "logout", "--local"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url, timeout=5)
