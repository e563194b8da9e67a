"""The web demo (demo/app.py) end to end in a real headless browser: Debian's chromium driven through selenium
uploads an image, presses the button and reads the caption, which must be the pipeline's for that image."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from transformers import pipeline

from demo.app import DEFAULT_MODEL, caption_files, check_loopback, check_model_folder, decoding_options

REPO = Path(__file__).resolve().parents[1]
BROWSER_PACKAGES = ("chromium", "chromium-driver")


def _browser_paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through its driver; installed with apt-get when missing. No silent skip: a browser that
    cannot be installed fails the test with apt's own words."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    if not (chromium and driver):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        steps = [
            [*sudo, "apt-get", "update", "-q"],
            [*sudo, "apt-get", "install", "-y", "-q", *BROWSER_PACKAGES],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.fail(
                    f"The browser test needs {' and '.join(BROWSER_PACKAGES)} (Debian packages), and `{' '.join(step)}` "
                    f"failed:\n{result.stderr[-2000:]}"
                )
        chromium, driver = _browser_paths()
        assert chromium and driver, (
            f"apt-get installed {BROWSER_PACKAGES} but chromium/chromedriver are not on PATH"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI runs as root, where chromium refuses its sandbox; /dev/shm is small in containers.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield session
    session.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(saved_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "demo.app", "--model", str(saved_dir), "--port", str(port), "--device", "cpu"],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the app did not answer within 60 s:\n" + log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_browser_upload_caption_matches_the_pipeline(browser, app_url, saved_dir, image_files):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    expected = captioner(image_files[2], generate_kwargs=decoding_options(max_new_tokens=30))[0][
        "generated_text"
    ]

    wait = WebDriverWait(browser, 40)
    browser.get(app_url)
    upload = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]"))
    )
    upload.send_keys(image_files[2])
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#image img")))  # uploaded
    browser.find_element(By.CSS_SELECTOR, "#caption-button").click()
    textarea = browser.find_element(By.CSS_SELECTOR, "#caption textarea")
    wait.until(lambda _: textarea.get_attribute("value"))
    assert textarea.get_attribute("value") == expected


def test_batch_mode_and_decoding_options_caption_as_the_pipeline(saved_dir, image_files):
    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    beams = decoding_options(num_beams=3, max_new_tokens=8)
    expected = [captioner(path, generate_kwargs=beams)[0]["generated_text"] for path in image_files]
    assert caption_files(captioner, image_files, **beams) == expected
    sampling = decoding_options(do_sample=True, top_p=0.8, temperature=1.5, max_new_tokens=8)
    assert caption_files(captioner, image_files, seed=1, **sampling) == caption_files(
        captioner, image_files, seed=1, **sampling
    )
    # The reranking box: the beams are CLIP's candidates, as the pipeline's clip_rerank
    reranked = decoding_options(num_beams=4, max_new_tokens=8, clip_rerank=True)
    expected = [captioner(path, max_new_tokens=8, clip_rerank=4)[0]["generated_text"] for path in image_files]
    assert caption_files(captioner, image_files, **reranked) == expected
    with pytest.raises(ValueError, match="CLIP reranking chooses among the beams: set Beams to 2 or more"):
        decoding_options(num_beams=1, clip_rerank=True)


def test_app_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default model is relative: here `make demo` has not run
    with pytest.raises(FileNotFoundError, match=r"Run `make demo` first: it trains the demo's model"):
        check_model_folder(DEFAULT_MODEL)
    # After `make demo-full` (three seeds) the default is the first seed's ε = auto model.
    seed0 = tmp_path / "demo_outputs" / "runs" / "eps_auto_seed0"
    seed0.mkdir(parents=True)
    (seed0 / "config.json").write_text("{}")
    assert check_model_folder(DEFAULT_MODEL) == Path("demo_outputs/runs/eps_auto_seed0")
    with pytest.raises(FileNotFoundError, match=rf"No saved CapDec model at {tmp_path}"):
        check_model_folder(tmp_path)
    with pytest.raises(ValueError, match=r"--host 0.0.0.0 is not a loopback address"):
        check_loopback("0.0.0.0")
    assert check_loopback("::1") == "::1" and check_loopback("localhost") == "localhost"
