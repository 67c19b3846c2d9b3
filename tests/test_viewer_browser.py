"""``pfascannet view`` in a real browser: headless Chromium (Debian's) driven by Selenium.

Opens the list, opens a tumour slide, checks in a screenshot that the slide's tiles and the map's
overlay arrived where the tumour is (and that the overlay leaves normal tissue alone), toggles the
overlay, clicks the top lesion and checks that the viewport moved to it, and goes to the next slide
with the ``n`` key.  Without Chromium this skips and says why; under CI (``CI=true``) it fails
instead, so CI can never pass without running it (``.ci/run`` installs Chromium).
"""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from tests.viewer_support import STRIDE_PX, Browser, Viewer, browser_missing, truth_map, tumour_centre_xy

MACRO = "patient_000_node_1"  # tests/conftest.py: the session cohort's macro slide


def _need_browser() -> None:
    why = browser_missing()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser test, but {why}")
    pytest.skip(f"browser test needs Chromium: {why}")


def _wait(fn, timeout_s: float = 60.0, what: str = ""):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _screen(driver) -> np.ndarray:
    """The page as RGB, in CSS pixels."""
    bgr = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    if ratio != 1:
        bgr = cv2.resize(bgr, None, fx=1 / ratio, fy=1 / ratio, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)


def _patch(rgb: np.ndarray, xy, half: int = 4) -> np.ndarray:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return rgb[y - half: y + half + 1, x - half: x + half + 1].reshape(-1, 3)


_TO_PAGE = """
const item = pfaView.viewer.world.getItemAt(0);
const box = document.getElementById('osd').getBoundingClientRect();
return arguments[0].map(function (p) {
  const q = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(p[0], p[1]));
  return [q.x + box.left, q.y + box.top];
});
"""


def test_list_then_a_tumour_slide_with_overlay_lesions_and_keys(truth_scan, cohort):
    _need_browser()
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    viewer = Viewer(truth_scan)
    browser = Browser(1280, 800)
    driver = browser.driver
    base = f"http://127.0.0.1:{viewer.port}"
    try:
        driver.set_page_load_timeout(60)
        # The list: every slide, most suspicious first, with thumbnails; a header click sorts.
        driver.get(base + "/")
        rows = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#slides tbody tr"), what="the slide list")
        listed = [r.get_attribute("data-slide") for r in rows]
        api = {r["slide"]: r for r in viewer.json("/api/slides")["slides"]}
        assert sorted(listed) == sorted(api)
        scores = [api[s]["score"] for s in listed]
        assert scores == sorted(scores, reverse=True)
        _wait(lambda: driver.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"), what="thumbnails")
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="slide"]').click()
        names = [r.get_attribute("data-slide") for r in driver.find_elements(By.CSS_SELECTOR, "#slides tbody tr")]
        assert names == sorted(names)

        # A tumour slide: its tiles and the overlay arrive.
        driver.find_element(By.LINK_TEXT, MACRO).click()
        _wait(lambda: driver.execute_script(
            "return !!(window.pfaView && pfaView.overlayLoaded() && pfaView.viewer.world.getItemAt(0).getFullyLoaded()"
            " && document.querySelector('path.truth-tumour'))"), what="the slide and its overlay")
        time.sleep(1.0)  # the last tiles' fade-in
        info = viewer.json(f"/api/slide/{MACRO}")
        tumour_xy = tumour_centre_xy(cohort, MACRO)
        prob, tissue = truth_map(str(cohort), MACRO, tuple(info["dimensions"]))
        # Normal tissue: the tissue cell farthest from the tumour (its map is 0.03, under the 0.5 threshold).
        far = cv2.distanceTransform((~(prob > 0.5)).astype(np.uint8), cv2.DIST_L2, 5) * (tissue & (prob < 0.5))
        far = cv2.erode(far, np.ones((3, 3), np.uint8))  # inside the tissue, not on its edge
        r, c = np.unravel_index(np.argmax(far), far.shape)
        normal_xy = (int(c * STRIDE_PX + STRIDE_PX // 2), int(r * STRIDE_PX + STRIDE_PX // 2))
        on_tumour, on_normal = driver.execute_script(_TO_PAGE, [tumour_xy, normal_xy])
        body = driver.find_element(By.TAG_NAME, "body")
        # Markers and outlines off (their keys), so the pixels compared are the slide's and the map's.
        body.send_keys("l")
        body.send_keys("t")
        assert not driver.find_element(By.ID, "layer-lesions").is_selected()
        assert not driver.find_element(By.ID, "layer-truth").is_selected()
        time.sleep(0.5)
        with_map = _screen(driver)
        assert driver.find_element(By.ID, "layer-map").is_selected()
        body.send_keys("m")  # the overlay's key
        assert not driver.find_element(By.ID, "layer-map").is_selected()
        time.sleep(1.0)
        without_map = _screen(driver)
        body.send_keys("t")
        body.send_keys("l")
        slide_tumour, slide_normal = _patch(without_map, on_tumour), _patch(without_map, on_normal)
        # The slide's own tiles are there: tissue texture, not the empty viewer's flat grey.
        background = np.array([0x2B, 0x2F, 0x33], np.float32)
        for patch in (slide_tumour, slide_normal):
            assert np.abs(patch.mean(axis=0) - background).max() > 40 and patch.std(axis=0).max() > 4
        # The overlay coloured the tumour (jet near 1: red, less blue) and left normal tissue alone.
        mapped = _patch(with_map, on_tumour).mean(axis=0)
        plain = slide_tumour.mean(axis=0)
        assert np.abs(mapped - plain).mean() > 20 and (mapped[0] - mapped[2]) > (plain[0] - plain[2]) + 30, (mapped, plain)
        assert np.abs(_patch(with_map, on_normal).mean(axis=0) - slide_normal.mean(axis=0)).max() < 6
        truth_box = driver.execute_script("return document.querySelector('path.truth-tumour').getBoundingClientRect()")
        assert truth_box["width"] > 30 and truth_box["left"] < on_tumour[0] < truth_box["right"]

        # The top lesion: a click in the list moves the viewport to it and zooms in.
        zoom_before = driver.execute_script("return pfaView.viewer.viewport.getZoom(true)")
        top = info["lesions"][0]
        first = driver.find_element(By.CSS_SELECTOR, "#lesions li.lesion")
        assert first.text.startswith(f"{top['p']:.3f}")
        first.click()

        def arrived():
            x, y = driver.execute_script("return pfaView.centreImagePx()")
            return abs(x - top["x"]) < STRIDE_PX and abs(y - top["y"]) < STRIDE_PX

        _wait(arrived, 20, "the viewport to centre on the top lesion")
        # 0.3 mm across (slide.js zoomTo) of an 11 x 5.5k px slide (2.7 x 1.3 mm): 5x the whole-slide zoom.
        assert driver.execute_script("return pfaView.viewer.viewport.getZoom(true)") > 4 * zoom_before
        assert "selected" in first.get_attribute("class")

        # n: the next slide.
        body.send_keys("n")
        _wait(lambda: driver.current_url.endswith("/slide/" + info["next"]), 20, "the next slide")
        _wait(lambda: driver.execute_script("return !!(window.pfaView && pfaView.info.slide === arguments[0])",
                                            info["next"]), 30, "the next slide's page")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe  # no failed request, no blocked script or style
    finally:
        browser.close()
        viewer.close()
