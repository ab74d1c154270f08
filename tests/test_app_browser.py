"""``spikect serve`` end to end in a real browser: headless Debian Chromium driven by Playwright.

The server runs as ``python -m spikect serve`` on a free localhost port with a tiny randomly initialised
checkpoint (its masks are meaningless; the page, the viewer and the plumbing are what is tested). A real
CT slice is uploaded through the page's file input; the test waits for the result, checks the class and
severity text, and samples the viewer's pixels from a screenshot to prove NiiVue drew the scan (WebGL2
through SwiftShader). Screenshots go to ``test-artifacts/`` (gitignored) for a human to look at.

Skipped, with the reason, without Chromium (``apt-get install chromium``) or the playwright package
(``pip install playwright``; its own browser download is never used).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikect.checkpoint import save_checkpoint
from spikect.config import Config
from spikect.model.network import MultiTaskNet
from tests.conftest import REPO, shared, tiny_model_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; scripts/test.sh does)"
)
if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install chromium; scripts/test.sh does as root)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    cfg = tiny_model_config(t_steps=2)
    weights = tmp / "tiny.safetensors"
    save_checkpoint(weights, MultiTaskNet(cfg), Config(model=cfg))
    port = _free_port()
    log = (tmp / "server.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("SPIKECT_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spikect", "serve", "--port", str(port), "--home", str(tmp / "home")]
        + ["--weights", str(weights), "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spikect serve did not start:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _watch(page: object) -> list[str]:
    """Console errors and uncaught exceptions of a page (CSP violations included)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: errors.append(str(e)))  # type: ignore[attr-defined]
    return errors


def _region(shot: Path, box: dict[str, float]) -> np.ndarray:
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    x0, y0 = int(box["x"]), int(box["y"])
    return img[y0 : y0 + int(box["height"]), x0 : x0 + int(box["width"])]


def test_upload_slice_shows_result_and_viewer(server: str, browser: object) -> None:
    png = shared("covid19-ct-seg-png", "ct", "0100.png")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    page.set_default_timeout(120_000)  # a loaded 2-core CI machine renders slowly
    errors = _watch(page)
    page.goto(server)
    page.wait_for_selector("text=Research tool, not a medical device")
    page.set_input_files("#file-input", str(png))
    page.wait_for_selector("#class-label:has-text('COVID-19')", timeout=120_000)
    label = page.inner_text("#class-label")
    severity = page.inner_text("#sev-value")
    assert any(word in label for word in ("positive", "negative", "indeterminate"))
    assert severity in {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
    assert page.inner_text("#sev-detail")  # the grade is explained
    assert page.locator("#scale li").count() == 5
    page.wait_for_selector("#gl[data-loaded]", timeout=60_000)
    page.wait_for_timeout(1500)  # let NiiVue finish its first frames
    shot = ARTIFACTS / "app-browser.png"
    page.screenshot(path=str(shot))
    box = page.locator("#gl").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200
    pixels = _region(shot, box)
    grey = pixels.mean(axis=2)
    # the CT slice: many distinct grey levels and bright tissue, not one flat background colour
    assert grey.std() > 20, f"viewer looks blank (std {grey.std():.1f})"
    assert len(np.unique(grey.round())) > 50
    assert (grey > 120).mean() > 0.02
    # the list shows the study with its result; the downloads are offered
    assert page.locator("#study-list li").count() == 1
    assert "CT-" in page.inner_text("#study-list li")
    assert page.locator("#downloads a").count() >= 4
    # keyboard: views switch with 2 / 1
    page.keyboard.press("2")
    assert page.get_attribute("[data-view=coronal]", "aria-pressed") == "true"
    page.keyboard.press("1")
    assert page.get_attribute("[data-view=axial]", "aria-pressed") == "true"
    assert not errors, errors
    page.close()


def test_volume_profile_click_jumps_to_the_slice(server: str, browser: object) -> None:
    nifti = shared("nifti", "example_ct_sm.nii.gz")
    page = browser.new_page(viewport={"width": 1366, "height": 768})  # type: ignore[attr-defined]
    page.set_default_timeout(120_000)  # a loaded 2-core CI machine renders slowly
    errors = _watch(page)
    page.goto(server)
    page.wait_for_selector("#study-list li", timeout=30_000)  # the earlier study is listed
    page.set_input_files("#file-input", str(nifti))
    page.wait_for_selector("#study-meta:has-text('30 slices')", timeout=120_000)
    page.wait_for_function("document.getElementById('gl').dataset.loaded === location.hash.slice(7)")
    assert page.inner_text("#slice-label").endswith("/ 30")
    box = page.locator("#profile .frame").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)  # the inferior end
    page.wait_for_function("document.getElementById('slice-label').textContent.startsWith('1 /')")
    page.keyboard.press("ArrowUp")
    page.wait_for_function("document.getElementById('slice-label').textContent.startsWith('2 /')")
    assert page.inner_text("#profile-readout").startswith("Slice 2:")
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "app-browser-volume.png"))
    assert not errors, errors
    page.close()


def test_png_fallback_without_webgl2(server: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    page.set_default_timeout(120_000)  # a loaded 2-core CI machine renders slowly
    errors = _watch(page)
    page.goto(f"{server}/?renderer=png")  # what a browser without WebGL2 gets
    page.wait_for_selector("text=Research tool, not a medical device")
    page.set_input_files("#file-input", str(shared("nifti", "example_ct_sm.nii.gz")))
    page.wait_for_selector("#fallback[data-loaded]", timeout=120_000)
    page.wait_for_function("document.getElementById('fallback').naturalWidth > 0")
    # the view settles after the study's last status poll; on a loaded machine that can trail the image
    page.wait_for_selector("#renderer-note", state="visible")
    before = page.get_attribute("#fallback", "src")
    page.keyboard.press("m")  # mediastinal window: the server renders the slice again
    page.keyboard.press("o")  # lung outline off
    assert not page.is_checked("#show-lung")
    assert page.get_attribute("[data-window=mediastinal]", "aria-pressed") == "true"
    page.wait_for_function(
        "([before]) => { const img = document.getElementById('fallback');"
        " return img.src !== before && img.complete && img.naturalWidth > 0; }",
        arg=[before],
    )
    shot = ARTIFACTS / "app-browser-fallback.png"
    page.screenshot(path=str(shot))
    box = page.locator("#fallback").bounding_box()
    assert box is not None
    grey = _region(shot, box).mean(axis=2)
    assert grey.std() > 20
    assert not errors, errors
    page.close()
