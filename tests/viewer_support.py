"""Test helpers of the viewer: a scan folder of the session cohort made from its truth, and a browser.

``write_truth_scan`` writes what ``pfascannet scan`` writes (maps, sidecars, lesion CSVs, contours,
slide scores, ``scan_config.json``) for every cohort slide, from a map that is the truth itself: 0.95
on the level-5 mask's tumour cells, 0.03 elsewhere, tissue cells only.  So a test knows where the
overlay must be coloured and where the top lesion is, without a model (a real scan of the demo is
checked by hand: README, BENCHMARKS.md).
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import tempfile

import cv2
import numpy as np

from pfascannet import camelyon
from pfascannet.inference import outputs, postprocess
from pfascannet.io_utils import write_json
from pfascannet.progress import Progress
from pfascannet.slide.annotations import read_mask_level
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tissue import read_tissue_png
from pfascannet.viewer import catalogue, server

STRIDE_PX = 32
TUMOUR_P, BACKGROUND_P = 0.95, 0.03


def truth_map(cohort_dir: str, slide: str, dims_xy: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(prob, tissue)`` on the 32 px grid of a slide of ``dims_xy`` from its mask and tissue PNG."""
    rows, cols = -(-dims_xy[1] // STRIDE_PX), -(-dims_xy[0] // STRIDE_PX)
    tumour = np.zeros((rows, cols), bool)
    mask_path = os.path.join(cohort_dir, "masks", f"{slide}_mask.tif")
    if os.path.exists(mask_path):
        level5 = read_mask_level(mask_path) > 0
        h, w = min(rows, level5.shape[0]), min(cols, level5.shape[1])
        tumour[:h, :w] = level5[:h, :w]
    tissue_png = read_tissue_png(os.path.join(cohort_dir, "tissue", f"{slide}_tissue.png"))
    tissue = np.zeros((rows, cols), bool)
    h, w = min(rows, tissue_png.shape[0]), min(cols, tissue_png.shape[1])
    tissue[:h, :w] = tissue_png[:h, :w]
    tissue |= tumour
    return np.where(tumour, TUMOUR_P, BACKGROUND_P).astype(np.float32), tissue


def write_truth_scan(cohort_dir: str, out_dir: str) -> list[str]:
    """A scan folder of every cohort slide whose maps are the truth (module docstring); returns the slide ids."""
    paths = sorted(glob.glob(os.path.join(cohort_dir, "images", "*.tif")))
    os.makedirs(out_dir, exist_ok=True)
    for path in paths:
        slide = camelyon.slide_id(path)
        with SlideReader(path) as reader:
            dims = reader.dimensions
        prob, tissue = truth_map(cohort_dir, slide, dims)
        meta = {"slide": slide, "slide_path": os.path.abspath(path), "alpha": 16, "roi_px": 2708,
                "stride_px": STRIDE_PX, "scan_level": 0, "dimensions": list(dims), "mpp": 0.243,
                "model": "truth (test)", "warnings": []}
        outputs.write_map(out_dir, slide, prob, meta, tissue)
    write_json(os.path.join(out_dir, "scan_config.json"), {"runs": [], "options": {}, "shard": None,
                                                            "slides": [os.path.abspath(p) for p in paths]})
    postprocess.postprocess_scan(out_dir, postprocess.PostSettings(heatmap=False),
                                 progress=Progress(label="post", enabled=False))
    return [camelyon.slide_id(p) for p in paths]


def tumour_centre_xy(cohort, slide) -> tuple[int, int]:
    """Level-0 centre of the largest tumour cell block of a slide's truth map."""
    with SlideReader(str(cohort / "images" / f"{slide}.tif")) as reader:
        dims = reader.dimensions
    prob, _ = truth_map(str(cohort), slide, dims)
    dist = cv2.distanceTransform((prob > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    r, c = np.unravel_index(np.argmax(dist), dist.shape)
    return int(c * STRIDE_PX + STRIDE_PX // 2), int(r * STRIDE_PX + STRIDE_PX // 2)


class Viewer:
    """A viewer server on a free port in this process."""

    def __init__(self, scan_dir, **kwargs):
        self.httpd = server.make_server(catalogue.ScanCatalogue(str(scan_dir), **kwargs), "127.0.0.1", 0)
        self.port = self.httpd.server_address[1]
        server.serve_in_thread(self.httpd)

    def request(self, path: str, method: str = "GET", host: str | None = None, body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            # skip_host: the path and the Host header go out exactly as given.
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host or f"127.0.0.1:{self.port}")
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.headers
        finally:
            conn.close()

    def json(self, path: str):
        status, body, _ = self.request(path)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- a headless Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio", "--disable-dev-shm-usage")
"""Headless, and quiet: without the network flags Chromium keeps trying to reach Google's services.
No /dev/shm: a container's is often 64 MB, too small for a renderer."""


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when Chromium, its driver and Selenium are all present."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        return f"no {' or '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401, PLC0415
    except ImportError:
        return "no selenium (pip install -e '.[dev]')"
    return None


class Browser:
    """A headless Chromium driven by Selenium through Debian's chromedriver (Selenium never downloads one)."""

    def __init__(self, width: int = 1280, height: int = 800):
        from selenium import webdriver  # noqa: PLC0415
        from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

        self.profile = tempfile.mkdtemp(prefix="pfa-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
