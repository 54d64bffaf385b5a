"""The page in a real headless Chromium (Selenium): upload a sketch, paint a hint, colorize, read back.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``);
skipped, saying why, only when they are missing or cannot start. Set GANIME_WRITE_SCREENSHOT=1 to
also refresh docs/web-screenshot.png (with GANIME_WEB_TEST_CHECKPOINT=<a hint-aware model> so that it
shows a real result rather than the grey of the two-step test model).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganime.imageio import open_image

from tests.test_web import Running, hint_checkpoint, models_from_checkpoints, png  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SKETCH = ROOT / "examples" / "adp-test1.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    for exe, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(exe, os.X_OK):
            pytest.skip(f"{exe} not found: install Debian's {pkg} (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    try:
        # An explicit driver path: selenium-manager would try to download one.
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except Exception as e:  # noqa: BLE001 - any failure to start means "no usable browser here"
        pytest.skip(f"headless Chromium could not start: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(hint_checkpoint):  # noqa: F811
    # GANIME_WEB_TEST_CHECKPOINT: serve a real (hint-aware) model instead, e.g. for the docs screenshot.
    ckpt = os.environ.get("GANIME_WEB_TEST_CHECKPOINT") or hint_checkpoint
    s = Running(models_from_checkpoints([ckpt], "cpu", style=False))
    yield s
    s.close()


def wait_state(driver, states, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.state") in states)
    return driver.execute_script("return document.body.dataset.state")


def test_colorize_in_the_browser(browser, page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(f"http://127.0.0.1:{page.port}/")
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('method').options.length") > 0)
    assert "model(s) on cpu" in d.find_element(By.ID, "server-status").text
    assert d.find_element(By.ID, "colorize").get_attribute("disabled")  # nothing to colour yet

    assert d.find_element(By.ID, "result-options").is_displayed()  # "Keep the paper white"
    has_layer = "flatten" in page.server.models[page.server.default_model].info  # not the two-step test model
    assert d.find_element(By.ID, "flatten-group").is_displayed() == has_layer

    d.find_element(By.ID, "file").send_keys(str(SKETCH))
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    w, h = Image.open(SKETCH).size
    canvas = d.find_element(By.ID, "hints")
    # The canvas has the sketch's own resolution, whatever size it is shown at.
    assert d.execute_script("const c = arguments[0]; return [c.width, c.height]", canvas) == [w, h]

    # Paint one stroke across the middle of the sketch.
    shown = canvas.size
    ActionChains(d).move_to_element_with_offset(canvas, -shown["width"] // 4, 0).click_and_hold() \
        .move_by_offset(shown["width"] // 8, 10).move_by_offset(shown["width"] // 8, -10) \
        .move_by_offset(shown["width"] // 8, 10).release().perform()
    painted = d.execute_script(
        "const c = arguments[0]; const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < a.length; i += 4) if (a[i] > 0) n++; return n;", canvas)
    assert painted > 100, "the drag painted nothing on the hint canvas"

    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
    result = d.find_element(By.ID, "result")
    assert result.is_displayed()
    assert d.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", result) == [w, h]

    # Read the PNG behind the download link back into Python.
    link = d.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download") == "adp-test1-colored.png"
    im = fetch_png(d, "download")
    assert im.format == "PNG" and im.size == (w, h) and im.mode == "RGB"
    # The hints were sent (the server refuses hints of another size than the sketch, so they were the
    # canvas at natural size) and changed the result: it differs from colouring without hints.
    assert any('"POST /api/colorize" 200' in line for line in page.log), page.log
    without = page.server.models[page.server.default_model].run(open_image(SKETCH))
    assert not np.array_equal(np.asarray(im), np.asarray(without)), "the painted hint did not reach the model"

    shot = tmp_path / "web.png"
    d.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0
    if os.environ.get("GANIME_WRITE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "web-screenshot.png")


def test_page_shows_api_errors(browser, page, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(f"http://127.0.0.1:{page.port}/")
    wait_state(d, ("idle",), 30)
    # A file that claims to be an image but is not: the browser cannot show it either.
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    d.find_element(By.ID, "file").send_keys(str(bad))
    assert wait_state(d, ("error",), 30) == "error"
    assert "not a readable image" in d.find_element(By.ID, "error").text

    # An API error reaches the page: an SVG is an image to the browser but not to the server.
    svg = tmp_path / "vector.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
                   '<rect width="64" height="48" fill="white"/><circle cx="32" cy="24" r="20" stroke="black"/></svg>')
    d.find_element(By.ID, "file").send_keys(str(svg))
    # The page still shows the previous error until the SVG has loaded: wait for "ready" itself.
    try:
        wait_state(d, ("ready",), 30)
    except Exception:
        raise AssertionError(f"the SVG did not load: {d.find_element(By.ID, 'error').text}") from None
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("error", "done"), 60) == "error"
    err = d.find_element(By.ID, "error")
    assert err.is_displayed() and "image: not a readable image" in err.text, err.text
    assert any('"POST /api/colorize" 400' in line for line in page.log)


@pytest.fixture(scope="module")
def shipped_page():
    from ganime.colorize import DEFAULT_WEIGHTS

    s = Running(models_from_checkpoints([DEFAULT_WEIGHTS], "cpu", style=False))
    yield s
    s.close()


def fetch_png(d, element_id: str) -> Image.Image:
    """The PNG behind an element's href (the download link), read back into Python."""
    from selenium.webdriver.common.by import By

    b64 = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0].href).then(r => r.arrayBuffer()).then(buf => {"
        "  let s = ''; const u = new Uint8Array(buf);"
        "  for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode.apply(null, u.subarray(i, i + 8192));"
        "  done(btoa(s)); }).catch(e => done('ERR ' + e));", d.find_element(By.ID, element_id))
    assert not b64.startswith("ERR"), b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_result_options_reach_the_shipped_model(browser, shipped_page):
    """Flat colours and Keep the paper white: the page sends them, the result is that of the model
    called with them directly."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ganime.colorize import DEFAULT_WEIGHTS, Colorizer

    d = browser
    d.get(f"http://127.0.0.1:{shipped_page.port}/")
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('method').options.length") > 0)
    slider = d.find_element(By.ID, "flatten")
    assert d.find_element(By.ID, "flatten-group").is_displayed() and slider.get_attribute("value") == "5"
    d.execute_script("arguments[0].value = '1.5'; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert d.find_element(By.ID, "flatten-value").text == "1.5"
    d.find_element(By.ID, "paper").click()
    d.find_element(By.ID, "file").send_keys(str(SKETCH))
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
    got = np.asarray(fetch_png(d, "download"))
    sketch = open_image(SKETCH)
    ref = Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu")
    assert np.array_equal(got, np.asarray(ref(sketch, flatten=1.5, background="paper")))
    assert not np.array_equal(got, np.asarray(ref(sketch)))


def open_page(d, server):
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(f"http://127.0.0.1:{server.port}/")
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('method').options.length") > 0)


def sketch_view(d) -> dict:
    """What the page shows and would send: the sketch's size, the hint canvas's size and painted pixels."""
    return d.execute_script(
        "const c = document.getElementById('hints'), i = document.getElementById('sketch');"
        "const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let k = 3; k < a.length; k += 4) if (a[k] > 0) n++;"
        "return {shown: [i.naturalWidth, i.naturalHeight], canvas: [c.width, c.height], painted: n,"
        "        name: document.getElementById('file-name').textContent};")


def test_a_failed_pick_keeps_the_current_sketch(browser, page, tmp_path):
    """A file the page refuses (too many pixels, unreadable), picked after a sketch, leaves that sketch
    shown with its hints: the page used to show the new file (or a broken image) over the old hint
    canvas while Colorize still sent the old file."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from ganime.web.server import Limits

    small = Running(page.server.models, Limits(max_pixels=300 * 300))
    try:
        d = browser
        open_page(d, small)
        good, big, bad = tmp_path / "good.png", tmp_path / "big.png", tmp_path / "broken.png"
        Image.open(SKETCH).convert("RGB").resize((200, 150)).save(good)
        Image.open(SKETCH).convert("RGB").resize((400, 400)).save(big)
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        d.find_element(By.ID, "file").send_keys(str(good))
        assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
        ActionChains(d).move_to_element(d.find_element(By.ID, "hints")).click().perform()
        before = sketch_view(d)
        assert before["shown"] == before["canvas"] == [200, 150] and before["painted"] > 0
        for f, why in ((big, "400x400 pixels"), (bad, "not a readable image")):
            d.find_element(By.ID, "file").send_keys(str(f))
            assert wait_state(d, ("error",), 30) == "error"
            assert why in d.find_element(By.ID, "error").text
            assert sketch_view(d) == before
        d.find_element(By.ID, "colorize").click()
        assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
        assert fetch_png(d, "download").size == (200, 150)
    finally:
        small.close()


def test_a_new_sketch_drops_the_answer_for_the_old_one(browser, page, tmp_path):
    """Picking another sketch while Colorize is out: the late answer is not shown beside the new sketch
    (nor offered for download under its name), and Colorize is ready for the new one."""
    import dataclasses
    import threading
    import time

    from selenium.webdriver.common.by import By

    release = threading.Event()
    inner = page.server.models[page.server.default_model]

    def run(*args, **kw):
        release.wait(60)
        return inner.run(*args, **kw)

    slow = Running({"slow": dataclasses.replace(inner, name="slow", run=run)})
    try:
        d = browser
        open_page(d, slow)
        first, second = tmp_path / "first.png", tmp_path / "second.png"
        Image.open(SKETCH).convert("RGB").resize((200, 150)).save(first)
        Image.open(SKETCH).convert("RGB").resize((150, 200)).save(second)
        d.find_element(By.ID, "file").send_keys(str(first))
        assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
        d.find_element(By.ID, "colorize").click()
        assert wait_state(d, ("working",), 10) == "working"
        d.find_element(By.ID, "file").send_keys(str(second))
        assert wait_state(d, ("ready",), 30) == "ready"
        release.set()
        deadline = time.monotonic() + 60
        while not any('"POST /api/colorize" 200' in line for line in slow.log):
            assert time.monotonic() < deadline, slow.log
            time.sleep(0.1)
        time.sleep(1)  # the page has the answer by now
        assert d.execute_script("return document.body.dataset.state") == "ready"
        assert not d.find_element(By.ID, "result").is_displayed()
        assert not d.find_element(By.ID, "download").is_displayed()
        button = d.find_element(By.ID, "colorize")
        assert button.text == "Colorize" and button.is_enabled()
        button.click()
        assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
        assert fetch_png(d, "download").size == (150, 200)
    finally:
        release.set()
        slow.close()


def test_a_sketch_edited_on_disk(browser, page, tmp_path):
    """Editing the sketch file after picking it: Colorize still colours the sketch shown (the browser
    refused to read the changed file: "Failed to fetch"), and picking the same file again loads the
    new version (the file input fired no change event for the same file)."""
    from selenium.webdriver.common.by import By

    d = browser
    open_page(d, page)
    f = tmp_path / "wip.png"
    Image.open(SKETCH).convert("RGB").resize((200, 150)).save(f)
    d.find_element(By.ID, "file").send_keys(str(f))
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    Image.open(SKETCH).convert("RGB").resize((150, 200)).save(f)
    os.utime(f, (f.stat().st_atime, f.stat().st_mtime + 10))
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
    assert fetch_png(d, "download").size == (200, 150)
    d.find_element(By.ID, "file").send_keys(str(f))
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    assert sketch_view(d)["canvas"] == [150, 200]


def test_flat_colours_start_from_a_server_setting_over_10(browser, page):
    """ganime serve --flatten 12: the page starts from 12 and sends it (the slider stopped at 10, so
    every request from the page quietly overrode the server's setting)."""
    import dataclasses

    from selenium.webdriver.common.by import By

    inner = page.server.models[page.server.default_model]
    asked = []

    def run(sketch, hints=None, style=None, **options):
        asked.append(options)
        return inner.run(sketch, hints, style)  # (the test model has no colour layer to flatten)

    for setting, sent in ((12.0, 12.0), (3.0, 3.0)):
        fake = Running({"flat": dataclasses.replace(inner, name="flat", run=run, info={**inner.info, "flatten": setting})})
        try:
            d = browser
            open_page(d, fake)
            assert d.find_element(By.ID, "flatten-value").text == f"{setting:g}"
            d.find_element(By.ID, "file").send_keys(str(SKETCH))
            assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
            d.find_element(By.ID, "colorize").click()
            assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
            assert asked.pop()["flatten"] == sent
        finally:
            fake.close()


def pick_resized_sketch(d, page, path, side: int, timeout: float):
    """Open the page, pick the sample sketch resized to side x side (saved at ``path``): the hint canvas."""
    from selenium.webdriver.common.by import By

    open_page(d, page)
    Image.open(SKETCH).convert("RGB").resize((side, side)).save(path)
    d.find_element(By.ID, "file").send_keys(str(path))
    assert wait_state(d, ("ready", "error"), timeout) == "ready", d.find_element(By.ID, "error").text
    return d.find_element(By.ID, "hints")


def test_hints_covering_a_small_sketch(browser, page, tmp_path):
    """A few dabs cover a small sketch: the page says so instead of sending hints that the server
    refuses with a sentence about RGBA PNGs the page's user never made."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = browser
    canvas = pick_resized_sketch(d, page, tmp_path / "tiny.png", 20, 30)
    for dx in (-6, 0, 6):
        for dy in (-6, 0, 6):
            ActionChains(d).move_to_element_with_offset(canvas, dx, dy).click().perform()
    assert sketch_view(d)["painted"] == 400
    posts = sum('"POST /api/colorize"' in line for line in page.log)
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "error"
    assert "cover the whole sketch" in d.find_element(By.ID, "error").text
    assert sum('"POST /api/colorize"' in line for line in page.log) == posts
    d.find_element(By.ID, "undo").click()
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text


def test_undo_memory_is_bounded_on_a_large_sketch(browser, page, tmp_path):
    """Undo keeps full copies of the hint canvas: on a 4096x4096 sketch (64 MB a copy) it keeps 4,
    not 20 (1.3 GB, enough to crash a tab), and Undo still steps back stroke by stroke."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = browser
    canvas = pick_resized_sketch(d, page, tmp_path / "large.png", 4096, 60)
    for k in range(5):
        ActionChains(d).move_to_element_with_offset(canvas, -100 + 40 * k, 0).click().perform()
    undo, steps = d.find_element(By.ID, "undo"), 0
    while undo.is_enabled():
        undo.click()
        steps += 1
    assert steps == 4
    assert sketch_view(d)["painted"] > 0  # the first dab, whose undo step was let go


def test_a_file_dropped_beside_the_sketch_panel(browser, page, tmp_path):
    """Dropped on the result panel, a file is taken as the sketch; the page did not cancel such a drop,
    and a desktop browser then leaves the page, painted hints and all, to show the file."""
    from selenium.webdriver.common.by import By

    d = browser
    open_page(d, page)
    f = tmp_path / "dropped.png"
    Image.open(SKETCH).convert("RGB").resize((120, 90)).save(f)
    r = d.find_element(By.ID, "result-stage").rect
    at = {"x": r["x"] + r["width"] / 2, "y": r["y"] + r["height"] / 2}
    data = {"items": [], "files": [str(f)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):  # a real drag, through the browser's input pipeline
        d.execute_cdp_cmd("Input.dispatchDragEvent", {"type": kind, **at, "data": data})
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    assert sketch_view(d)["canvas"] == [120, 90]


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG"])
def test_a_sketch_with_an_exif_orientation(browser, page, tmp_path, monkeypatch, fmt):
    """The server colours the sketch as the page shows it, whether this browser turns it by its EXIF tag
    or not: headless Chromium ignores a WebP's tag (and applies a JPEG's) while the server always
    applied it, so hints painted over a tagged WebP were refused for their size and without hints the
    result came back turned against the sketch shown."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    stored = Image.open(SKETCH).convert("RGB").resize((200, 120))
    tag = Image.Exif()
    tag[0x0112] = 6  # turn 90 degrees clockwise
    f = tmp_path / f"turned.{fmt.lower()}"
    stored.save(f, fmt, exif=tag.tobytes(), **({"lossless": True} if fmt == "WEBP" else {"quality": 95}))
    model = page.server.models[page.server.default_model]
    received = []

    def spy(sketch, *args, **kwargs):
        received.append(np.asarray(sketch, dtype=np.int16))
        return run(sketch, *args, **kwargs)

    run = model.run
    monkeypatch.setattr(model, "run", spy)
    d = browser
    open_page(d, page)
    d.find_element(By.ID, "file").send_keys(str(f))
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element(By.ID, "error").text
    ActionChains(d).move_to_element(d.find_element(By.ID, "hints")).click().perform()
    view = sketch_view(d)
    assert view["painted"] > 0
    d.find_element(By.ID, "colorize").click()
    assert wait_state(d, ("done", "error")) == "done", d.find_element(By.ID, "error").text
    assert fetch_png(d, "download").size == tuple(view["shown"])
    shown = d.execute_script(
        "const i = document.getElementById('sketch'), c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
        "return Array.from(x.getImageData(0, 0, c.width, c.height).data);")
    shown = np.asarray(shown, dtype=np.int16).reshape(view["shown"][1], view["shown"][0], 4)[..., :3]
    assert len(received) == 1 and received[0].shape == shown.shape
    assert np.abs(received[0] - shown).mean() < 2  # the same picture (decoders round JPEG differently)


def test_a_pasted_image_becomes_the_sketch(browser, page):
    """Ctrl+V of an image copied elsewhere (a drawing program, another page) loads it as the sketch, whichever
    control has the focus (the page's inputs are sliders, a colour picker, a checkbox); a paste into
    editable text is left alone."""
    d = browser
    open_page(d, page)
    b64 = base64.b64encode(png(Image.open(SKETCH).convert("RGB").resize((90, 70)))).decode()
    paste = (
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const dt = new DataTransfer(); dt.items.add(new File([bytes], 'image.png', {type: 'image/png'}));"
        "arguments[1].dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));")
    text = d.execute_script("const t = document.createElement('textarea'); document.body.append(t); return t;")
    d.execute_script(paste, b64, text)  # editable text: not taken
    time.sleep(0.5)
    assert d.execute_script("return document.body.dataset.state") != "ready"
    d.execute_script("arguments[0].remove()", text)
    d.execute_script(paste, b64, d.find_element("id", "flatten"))  # a slider has the focus
    assert wait_state(d, ("ready", "error"), 30) == "ready", d.find_element("id", "error").text
    view = sketch_view(d)
    assert view["shown"] == view["canvas"] == [90, 70] and view["name"].startswith("pasted-")


def test_ctrl_z_undoes_a_stroke_whatever_control_had_the_focus(browser, page, tmp_path):
    """Painting leaves the focus where it was (the canvas takes no focus), typically on the brush slider or
    the colour picker just used: Ctrl+Z did nothing there, as if the page had no undo. Only editable text
    keeps Ctrl+Z for itself."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    canvas = pick_resized_sketch(d, page, tmp_path / "undo.png", 200, 30)
    brush = d.find_element(By.ID, "brush")
    brush.click()
    brush.send_keys(Keys.ARROW_RIGHT)  # the artist sets the brush size
    ActionChains(d).move_to_element_with_offset(canvas, 0, 0).click().perform()
    assert d.execute_script("return document.activeElement.id") == "brush"
    assert sketch_view(d)["painted"] > 0
    ActionChains(d).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert sketch_view(d)["painted"] == 0, "Ctrl+Z with the focus on the brush slider did not undo"
