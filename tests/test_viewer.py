"""``pfascannet view``: the server's pages, tiles and overlay, what it refuses to serve, and the command.

The scan folder is the session cohort's with maps that are the truth (``truth_scan``,
tests/viewer_support.py), so the overlay must be coloured exactly where the mask says tumour.
The browser test is tests/test_viewer_browser.py.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pfascannet.viewer import catalogue, tiles
from tests.viewer_support import STRIDE_PX, Viewer, truth_map, tumour_centre_xy

MODULE = [sys.executable, "-m", "pfascannet.cli"]
MACRO, NORMAL = "patient_000_node_1", "patient_000_node_0"  # tests/conftest.py: the session cohort's labels


@pytest.fixture(scope="module")
def viewer(truth_scan):
    v = Viewer(truth_scan)
    yield v
    v.close()


def _png(body: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


# --------------------------------------------------------------------------- what the pages get


def test_the_list_has_every_slide_with_score_and_the_cohorts_truth(viewer, cohort, truth_scan):
    data = viewer.json("/api/slides")
    rows = {r["slide"]: r for r in data["slides"]}
    assert sorted(rows) == sorted(p[:-4] for p in os.listdir(cohort / "images"))
    # The truth beside the scanned slides (the cohort layout) was found without flags.
    assert str(cohort / "slides.csv") in data["truth"] and str(cohort / "annotations") in data["truth"]
    assert rows[MACRO]["label"] == "macro" and rows[MACRO]["tumour"] is True
    assert rows[NORMAL]["label"] == "negative" and rows[NORMAL]["tumour"] is False
    assert rows[MACRO]["score"] == pytest.approx(0.95, abs=1e-5)
    assert rows[NORMAL]["score"] == pytest.approx(0.03, abs=1e-5)
    status, body, headers = viewer.request(f"/thumb/{MACRO}.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and max(_png(body).shape[:2]) <= 200
    for page in ("/", f"/slide/{MACRO}"):
        status, body, headers = viewer.request(page)
        assert status == 200 and b"<html" in body
        # Nothing from elsewhere: the page may load only what this server serves.
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert b"http://" not in body and b"https://" not in body


def test_a_tumour_slide_page_has_its_truth_top_lesion_and_contours(viewer, cohort):
    info = viewer.json(f"/api/slide/{MACRO}")
    assert info["slide_error"] is None and info["map_error"] is None and info["has_overlay"]
    assert info["mpp"] == pytest.approx(0.243) and info["label"] == "macro"
    assert info["truth"]["source"] == str(cohort / "annotations" / f"{MACRO}.xml")
    rings = [np.array(r, np.float32) for r in info["truth"]["tumour"]]
    assert rings, "a macro slide has a tumour outline"
    top = info["lesions"][0]
    assert top["p"] == pytest.approx(0.95, abs=1e-4)
    assert [m["p"] for m in info["lesions"]] == sorted((m["p"] for m in info["lesions"]), reverse=True)
    # The most probable lesion of a truth map lies on the tumour the outline draws.
    assert max(cv2.pointPolygonTest(r, (top["x"], top["y"]), True) for r in rings) > -STRIDE_PX
    assert info["contours"] and info["contours"][0]["rings"]
    assert set(info["files"]) >= {"lesions", "geojson", "xml"}
    normal = viewer.json(f"/api/slide/{NORMAL}")
    assert normal["truth"]["tumour"] == [] and normal["label"] == "negative"
    assert (info["prev"], info["next"]) == ("patient_000_node_0", "patient_000_node_2")


def test_slide_tiles_are_the_slides_deep_zoom(viewer, cohort):
    status, body, _ = viewer.request(f"/dzi/{MACRO}.dzi")
    assert status == 200 and b'TileSize="254"' in body and b'Overlap="1"' in body
    pyramid = tiles.SlidePyramid(str(cohort / "images" / f"{MACRO}.tif"))
    level = pyramid.dz.level_count - 4
    status, body, headers = viewer.request(f"/dzi/{MACRO}_files/{level}/0_0.jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    got = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    want = np.asarray(pyramid.dz.get_tile(level, (0, 0)).convert("RGB"))
    assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 3  # JPEG, quality 80
    cols, rows = pyramid.dz.level_tiles[level]
    assert viewer.request(f"/dzi/{MACRO}_files/{level}/{cols}_0.jpeg")[0] == 404
    assert viewer.request(f"/dzi/{MACRO}_files/99/0_0.jpeg")[0] == 404


def test_overlay_tiles_colour_the_tumour_and_tissue_only(viewer, cohort):
    pyramid = tiles.SlidePyramid(str(cohort / "images" / f"{MACRO}.tif"))
    x, y = tumour_centre_xy(cohort, MACRO)
    for level in (pyramid.dz.level_count - 1, pyramid.dz.level_count - 5):  # finer and coarser than the map
        ds = 2 ** (pyramid.dz.level_count - 1 - level)
        col, row = (x // ds) // tiles.TILE_PX, (y // ds) // tiles.TILE_PX
        status, body, _ = viewer.request(f"/overlay/{MACRO}/t50_files/{level}/{col}_{row}.png")
        assert status == 200
        bgra = _png(body)
        # The overlay's tiles are cut exactly as the slide's, so OpenSeadragon stacks them.
        assert bgra.shape[:2] == pyramid.dz.get_tile_dimensions(level, (col, row))[::-1]
        x0, y0, _, _ = viewer.httpd.app.overlay(MACRO)[0].tile_box(level, col, row)
        b, g, r, a = bgra[y // ds - y0, x // ds - x0]
        assert a == 255 and r > 100 and g < 60 and b < 60, (level, (b, g, r, a))  # jet at 0.95: dark red
    # Above the map's maximum nothing shows; at 0 the whole tissue is tinted but glass is not.
    level = pyramid.dz.level_count - 7  # 64 level-0 px per pixel: one tile
    cols, rows = pyramid.dz.level_tiles[level]
    assert (cols, rows) == (1, 1)
    assert _png(viewer.request(f"/overlay/{MACRO}/t96_files/{level}/0_0.png")[1])[..., 3].max() == 0
    alpha = _png(viewer.request(f"/overlay/{MACRO}/t00_files/{level}/0_0.png")[1])[..., 3] > 0
    _, tissue = truth_map(str(cohort), MACRO, pyramid.dimensions)
    ds = 2 ** (pyramid.dz.level_count - 1 - level)
    want = cv2.resize(tissue.astype(np.uint8), alpha.shape[::-1], interpolation=cv2.INTER_AREA) > 0
    assert 0.2 < alpha.mean() < 0.95 and (alpha == want).mean() > 0.9, (alpha.mean(), (alpha == want).mean(), ds)


def test_the_overlay_is_rendered_once_per_level_and_keeps_one_cell_lesions_zoomed_out():
    prob = np.zeros((40, 64), np.float32)
    prob[17, 33] = 0.9  # one 32 px cell: an ITC
    dims = [(1, 1)]
    w, h = 64 * 32, 40 * 32
    levels = []
    while (w, h) != (1, 1):
        levels.append((w, h))
        w, h = max(1, -(-w // 2)), max(1, -(-h // 2))
    dims += levels[::-1]
    overlay = tiles.MapOverlay(prob, 32, dims)
    top = len(dims) - 1
    for level in (top, top - 3, top - 6, top - 8):  # 1, 8, 64 and 256 level-0 px per screen pixel
        w, h = overlay.level_dimensions[level]
        highest = max(overlay.tile_codes(level, c, r).max()
                      for c in range(-(-w // tiles.TILE_PX)) for r in range(-(-h // tiles.TILE_PX)))
        assert highest == 1 + round(0.9 * 254), level
        assert overlay.raster(level)[0] is overlay.raster(level)[0]  # made once, then reused
    assert set(overlay._rasters) == {top, top - 3, top - 6, top - 8}
    assert overlay.raster(top)[0] is overlay.codes  # the map's own grid where a pixel is finer than a cell


def test_every_page_file_ships_with_the_package_and_openseadragon_is_the_recorded_release():
    # Offline: the pages load only files that pip installs (setup.py package_data), nothing from a CDN.
    import fnmatch  # noqa: PLC0415
    import re  # noqa: PLC0415

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "setup.py"), encoding="utf-8") as f:
        patterns = re.findall(r'"(viewer/static/[^"]+)"', f.read())
    package = os.path.join(repo, "pfascannet")
    static = os.path.join(package, "viewer", "static")
    files = [os.path.relpath(os.path.join(d, n), package) for d, _, names in os.walk(static) for n in names]
    assert len(files) > 40
    for rel in files:
        assert any(os.path.dirname(p) == os.path.dirname(rel) and fnmatch.fnmatch(os.path.basename(rel),
                   os.path.basename(p)) for p in patterns), f"{rel} is not in setup.py package_data"
    with open(os.path.join(static, "openseadragon", "VERSION.txt"), encoding="utf-8") as f:
        version = re.search(r"OpenSeadragon (\d+\.\d+\.\d+)", f.read()).group(1)
    with open(os.path.join(static, "openseadragon", "openseadragon.min.js"), encoding="utf-8") as f:
        assert f.readline().strip() == f"//! openseadragon {version}"
    assert os.path.getsize(os.path.join(static, "openseadragon", "LICENSE.txt")) > 1000


# --------------------------------------------------------------------------- what it refuses


TRAVERSALS = [
    "/static/../catalogue.py", "/static/%2e%2e/catalogue.py", "/static/%2e%2e%2fcatalogue.py",
    "/static/..%2f..%2f..%2fsetup.py", "/files/../scan_config.json", "/files/%2e%2e/%2e%2e/etc/passwd",
    "/files//etc/passwd", "/files/%2fetc%2fpasswd", "//etc/passwd", "/files/lesions/..%2f..%2foutside.txt",
    "/dzi/..%2f..%2fetc%2fpasswd.dzi", "/dzi/%2e%2e.dzi", "/thumb/..%2foutside.png", "/api/slide/..",
    "/files/lesions/outside.csv", "/files/maps/outside.json", "/files/outside_dir/secret.csv",
    "/files/maps/.hidden.json", "/files/lesions/" + "x" * 300 + ".csv", "/slide/%00", "/files/lesions/%00.csv",
]


@pytest.fixture
def scan_copy(truth_scan, tmp_path):
    """A private copy of the truth scan (these tests change it) and a secret file outside it."""
    scan = tmp_path / "scan"
    shutil.copytree(truth_scan, scan, ignore=shutil.ignore_patterns("locks"))
    secret = tmp_path / "secret.csv"
    secret.write_text("0.99,1,1\nSECRET\n")
    return scan, secret


def test_nothing_outside_the_scan_folder_is_served(scan_copy):
    scan, secret = scan_copy
    (scan / "outside.txt").write_text("inside, but not a scan output")
    os.symlink(secret, scan / "lesions" / "outside.csv")
    os.symlink(secret, scan / "maps" / "outside.json")
    os.symlink(secret.parent, scan / "outside_dir")
    (scan / "maps" / ".hidden.json").write_text("{}")
    v = Viewer(scan)
    try:
        for path in TRAVERSALS:
            status, body, _ = v.request(path)
            assert status == 404, (path, status)
            assert b"SECRET" not in body and b"import" not in body
        # A symlink out of the folder is not a slide's map or lesion list either.
        assert "outside" not in [r["slide"] for r in v.json("/api/slides")["slides"]]
        assert v.request("/api/slide/outside")[0] == 404
        # What is inside is served.
        status, body, headers = v.request(f"/files/lesions/{MACRO}.csv")
        assert status == 200 and body.startswith(b"0.95") and "attachment" in headers["Content-Disposition"]
        assert v.request("/static/openseadragon/openseadragon.min.js")[0] == 200
        assert v.request("/static/openseadragon/LICENSE.txt")[0] == 200
    finally:
        v.close()


def test_it_is_read_only_and_answers_only_to_loopback_names(viewer, truth_scan):
    before = (truth_scan / "lesions" / f"{MACRO}.csv").read_bytes()
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        status, _, headers = viewer.request(f"/files/lesions/{MACRO}.csv", method=method, body=b"0.1,1,1\n")
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    assert (truth_scan / "lesions" / f"{MACRO}.csv").read_bytes() == before
    assert viewer.request("/api/slides", method="HEAD")[0] == 200
    # A page on another site that rebinds its name to 127.0.0.1 cannot read the slides.
    assert viewer.request("/api/slides", host="evil.example:80")[0] == 403
    assert viewer.request("/api/slides", host=f"localhost:{viewer.port}")[0] == 200
    assert viewer.httpd.server_address[0] == "127.0.0.1"


def test_a_corrupt_slide_or_a_missing_map_shows_on_its_page_and_the_server_goes_on(scan_copy, cohort, tmp_path):
    scan, _ = scan_copy
    broken = tmp_path / "broken.tif"
    data = (cohort / "images" / f"{MACRO}.tif").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    sidecar = scan / "maps" / f"{MACRO}.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(dict(meta, slide_path=str(broken))))
    nomap = "patient_001_node_0"
    os.remove(scan / "maps" / f"{nomap}.npy")
    v = Viewer(scan)
    try:
        info = v.json(f"/api/slide/{MACRO}")
        assert info["slide_error"] and "broken.tif" in info["slide_error"]
        assert v.request(f"/dzi/{MACRO}.dzi")[0] == 404
        status, body, _ = v.request(f"/thumb/{MACRO}.png")  # the list shows this text in the row
        assert status == 404 and b"broken.tif" in body
        assert v.request(f"/slide/{MACRO}")[0] == 200  # the page itself, which shows the error
        info = v.json(f"/api/slide/{nomap}")
        assert info["slide_error"] is None and "missing" in info["map_error"] and not info["has_overlay"]
        assert v.request(f"/overlay/{nomap}/t50.dzi")[0] == 404
        assert v.request(f"/dzi/{nomap}.dzi")[0] == 200  # the slide itself still shows
        rows = {r["slide"]: r for r in v.json("/api/slides")["slides"]}
        assert rows[nomap]["problem"] and len(rows) == 6
        assert v.json(f"/api/slide/{NORMAL}")["has_overlay"]
    finally:
        v.close()


def test_explicit_truth_flags_override_the_guess(truth_scan, cohort, tmp_path):
    from pfascannet.viewer.truth import TruthSources  # noqa: PLC0415

    # Only masks given (no XML anywhere): the outline is traced from the level-5 mask.
    empty = tmp_path / "no_xml"
    empty.mkdir()
    cat = catalogue.ScanCatalogue(str(truth_scan), truth_override=TruthSources(annotations_dir=str(empty)))
    assert cat.truth_sources.reference == str(cohort / "slides.csv")
    outlines, problem = cat.outlines(MACRO)
    assert problem is None and outlines["source"].endswith(f"{MACRO}_mask.tif") and outlines["tumour"]
    x, y = tumour_centre_xy(cohort, MACRO)
    rings = [np.array(r, np.float32) for r in outlines["tumour"]]
    assert max(cv2.pointPolygonTest(r, (x, y), False) for r in rings) > 0


@pytest.mark.parametrize("slide, reference, annotations", [
    ("C/images/patient_000_node_0.tif", "C/slides.csv", "C/annotations"),  # the project's cohort
    ("CAMELYON16/testing/images/test_001.tif", "CAMELYON16/testing/reference.csv",
     "CAMELYON16/testing/lesion_annotations"),
    ("CAMELYON16/training/tumor/tumor_001.tif", None, "CAMELYON16/training/lesion_annotations"),
    ("CAMELYON16/testing/images/test_001.tif", "CAMELYON16/testing/reference.csv",
     "CAMELYON16/testing/lesion_annotations.zip"),
    ("CAMELYON17/training/center_0/patient_000_node_0.tif", "CAMELYON17/training/stage_labels.csv",
     "CAMELYON17/training/lesion_annotations"),
])
def test_the_truth_is_found_beside_the_slides(tmp_path, slide, reference, annotations):
    from pfascannet.viewer.truth import find_truth_sources  # noqa: PLC0415

    for rel in (slide, reference):
        if rel:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("")
    if annotations.endswith(".zip"):
        import zipfile  # noqa: PLC0415

        with zipfile.ZipFile(tmp_path / annotations, "w") as zf:
            zf.writestr("test_001.xml", "<ASAP_Annotations/>")
    else:
        (tmp_path / annotations).mkdir(parents=True)
    found = find_truth_sources({"s": str(tmp_path / slide)})
    assert found.reference == (str(tmp_path / reference) if reference else None)
    assert found.annotations_dir == str(tmp_path / annotations) and found.masks_dir is None


# --------------------------------------------------------------------------- the command


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow  # four child processes
def test_bad_input_is_one_line_and_exit_2(tmp_path, truth_scan):
    run = lambda *a: subprocess.run([*MODULE, "view", *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    assert "no such folder" in _one_error_line(run(str(tmp_path / "nope")))
    assert "not a scan folder" in _one_error_line(run(str(tmp_path)))
    assert "--reference" in _one_error_line(run(str(truth_scan), "--reference", str(tmp_path / "none.csv")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "in use" in _one_error_line(run(str(truth_scan), "--port", str(taken.getsockname()[1])))


@pytest.mark.slow  # a child process that serves until stopped
def test_view_prints_its_url_serves_and_stops_on_ctrl_c(truth_scan):
    for host, warns in (("127.0.0.1", False), ("0.0.0.0", True)):
        # SIG_DFL: a test run started in the background (nohup ... &) would pass SIGINT on ignored.
        proc = subprocess.Popen([*MODULE, "view", str(truth_scan), "--port", "0", "--host", host],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            url = None
            deadline = time.time() + 60
            while url is None and time.time() < deadline:
                line = proc.stdout.readline()
                if "http://" in line:
                    url = line[line.index("http://"):].split()[0]
            assert url and url.startswith(f"http://{host}:"), url
            port = int(url.rsplit(":", 1)[1].strip("/"))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/slides")
            assert conn.getresponse().status == 200
            conn.close()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0 and "Traceback" not in err, err
            assert ("warning:" in err and "no login" in err) == warns, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_outlines_are_read_from_a_lesion_annotations_zip_as_downloaded(cohort, tmp_path):
    import zipfile  # noqa: PLC0415

    from pfascannet.viewer.truth import TruthSources, slide_outlines  # noqa: PLC0415

    zpath = tmp_path / "lesion_annotations.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in sorted(os.listdir(cohort / "annotations")):
            zf.write(cohort / "annotations" / name, f"lesion_annotations/{name.upper().replace('.XML', '.xml')}")
    from_zip = slide_outlines(TruthSources(annotations_dir=str(zpath)), "patient_000_node_1")
    from_folder = slide_outlines(TruthSources(annotations_dir=str(cohort / "annotations")), "patient_000_node_1")
    assert from_zip["tumour"] and from_zip["tumour"] == from_folder["tumour"]
    assert from_zip["exclusion"] == from_folder["exclusion"]
    assert from_zip["source"].startswith(str(zpath) + ":")
