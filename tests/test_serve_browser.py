"""The page `cnncli serve` shows at / (issue 11, acceptance 2), in a real headless Chromium driven by Selenium:
choose an image through the page and see its top class and bars rendered. The service requires an API key
(issue 23): the page asks for it once, keeps it for the tab (sessionStorage) and sends it with every call.
Debian's chromium and chromedriver (/usr/bin, installed by .ci/run); Selenium Manager is never used (the driver
path is given). No screenshots."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import httpx
import pytest
from serve_helpers import ServeProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                    "`.ci/run` installs them (apt-get install chromium chromium-driver).")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--window-size=1000,800",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_classifies_a_chosen_image_and_renders_its_top_class(browser, tiny_model_file, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from cnncli.engines.cache import prepare_cached_onnx

    prepare_cached_onnx(str(tiny_model_file), quiet=True)
    image = tmp_path / "my cat.jpg"
    shutil.copy(photos["chelsea"], image)
    key = secrets.token_urlsafe(20)
    with ServeProcess("-m", tiny_model_file, "--max-files", "2", env={"CNNCLI_API_KEY": key}) as server:
        expected = httpx.post(server.url + "/v1/classify?top_k=3", content=image.read_bytes(),
                              headers={"X-API-Key": key}).json()[0]["top"]
        page = httpx.get(server.url + "/").text
        assert "http://" not in page and "https://" not in page  # nothing from a CDN: works offline

        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        # the page asks for the key (a wrong one is refused and asked for again), then loads the card with it
        wait.until(ec.visibility_of_element_located((By.ID, "apikey")))
        assert "API key is needed" in browser.find_element(By.ID, "model").text
        browser.find_element(By.ID, "apikey").send_keys("not-the-key-at-all")
        browser.find_element(By.ID, "keysave").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "keynote"), "the API key is not valid"))
        browser.find_element(By.ID, "apikey").send_keys(key)
        browser.find_element(By.ID, "keysave").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "simplecnn"))
        assert not browser.find_element(By.ID, "keyform").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('cnncli-api-key')") == key
        # the drop zone is a box of its own: it overlapped the model line and the top-k field as an inline label
        boxes = [browser.find_element(By.ID, name).rect for name in ("model", "drop", "topk")]
        assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"], boxes
        assert boxes[1]["y"] + boxes[1]["height"] <= boxes[2]["y"], boxes
        topk = browser.find_element(By.ID, "topk")
        topk.clear()
        topk.send_keys("3")
        browser.find_element(By.ID, "files").send_keys(str(image))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".result .row")))
        result = browser.find_element(By.CSS_SELECTOR, ".result")
        assert result.find_element(By.CSS_SELECTOR, ".name").text == "my cat.jpg"
        labels = [e.text for e in result.find_elements(By.CSS_SELECTOR, ".row .label")]
        assert labels == [t["label"] for t in expected]
        widths = [e.value_of_css_property("width") for e in result.find_elements(By.CSS_SELECTOR, ".bar span")]
        assert len(widths) == 3 and float(widths[0].removesuffix("px")) > 0
        shown = result.find_element(By.CSS_SELECTOR, ".row .prob").text
        assert shown == f"{100 * expected[0]['prob']:.1f}%"

        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.find_element(By.ID, "files").send_keys(str(bad))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".result .error")))
        assert "notes.png: not an image" in browser.find_element(By.CSS_SELECTOR, ".result .error").text

        many = []
        for i in range(3):  # more than --max-files: the page sends them in two requests
            many.append(tmp_path / f"copy{i}.jpg")
            shutil.copy(photos["coffee"], many[-1])
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in many))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 5)
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".result .name")]
        assert sorted(names[:3]) == ["copy0.jpg", "copy1.jpg", "copy2.jpg"]
        assert browser.find_element(By.ID, "status").text == ""

        browser.refresh()  # the same tab: the key is kept, nothing is asked again
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "simplecnn"))
        assert not browser.find_element(By.ID, "keyform").is_displayed()
    assert "POST /v1/classify 200 images=1" in server.stderr
    assert "POST /v1/classify 200 images=2" in server.stderr
    assert "GET /v1/model 401" in server.stderr and "POST /v1/classify 401" not in server.stderr
