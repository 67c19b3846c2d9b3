"""SlideReader: geometry, mpp, white outside/transparent areas, one clear error per bad file."""

import os

import numpy as np
import pytest

from pfascannet.slide.reader import SlideError, SlideReader, composite_on_white
from tests.slide_support import TISSUE_RGB, H, W, write_test_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_test_slide(tmp_path_factory.mktemp("slides") / "patient_000_node_0.tif")


def test_geometry_and_mpp(slide_path):
    with SlideReader(slide_path) as r:
        assert r.name == "patient_000_node_0"
        assert r.dimensions == (W, H)
        assert r.level_count >= 6
        for level, (w, h) in enumerate(r.level_dimensions):
            assert (w, h) == (-(-W // 2**level), -(-H // 2**level))
            # OpenSlide averages W/w and H/h (31.8 at level 5); the true scale is 2**level.
            assert r.level_downsamples[level] == 2**level
        assert r.mpp == pytest.approx(0.243)
        assert r.require_mpp() == pytest.approx(0.243)
        assert r.best_level(32) == 5 and r.best_level(40) == 5 and r.best_level(1) == 0


def test_mpp_override_and_missing_mpp(tmp_path, slide_path):
    with SlideReader(slide_path, mpp=0.5) as r:
        assert r.mpp == 0.5
    bare = write_test_slide(tmp_path / "bare.tif", mpp=None)
    with SlideReader(bare) as r:
        assert r.mpp is None
        with pytest.raises(SlideError, match="carries no pixel size.*--mpp"):
            r.require_mpp()
    with SlideReader(bare, mpp=0.25) as r:
        assert r.require_mpp() == 0.25
    for bad in (0, -1, float("nan"), "abc"):
        with pytest.raises(SlideError, match="mpp override must be a positive number"):
            SlideReader(slide_path, mpp=bad)


def test_regions_are_rgb_and_white_off_the_slide(slide_path):
    with SlideReader(slide_path) as r:
        centre = r.read_region((1150 - 4, 1050 - 4), 0, (8, 8))
        assert centre.dtype == np.uint8 and centre.shape == (8, 8, 3)
        assert np.abs(centre.mean(axis=(0, 1)) - TISSUE_RGB).max() < 25
        corner = r.read_region((-30, -20), 0, (60, 40))
        assert (corner[:20] == 255).all() and (corner[:, :30] == 255).all()
        edge = r.read_region((W - 10, H - 10), 0, (30, 30))
        assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all()
        assert (edge[:10, :10] < 255).any()  # the slide's own glass is not pure white
        far = r.read_region((10 * W, 10 * H), 2, (16, 16))
        assert (far == 255).all()


def test_region_argument_errors(slide_path):
    with SlideReader(slide_path) as r:
        with pytest.raises(SlideError, match="level 99 out of range"):
            r.read_region((0, 0), 99, (4, 4))
        with pytest.raises(SlideError, match="size must be positive"):
            r.read_region((0, 0), 0, (0, 4))
        with pytest.raises(SlideError, match="larger than"):
            r.read_region((0, 0), 0, (100000, 100000))


def test_composite_on_white():
    rgba = np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128], [200, 100, 0, 51]]], np.uint8)
    out = composite_on_white(rgba)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent = white glass
    np.testing.assert_array_equal(out[0, 1], [100, 50, 0])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])
    np.testing.assert_array_equal(out[0, 3], [244, 224, 204])
    opaque = np.full((2, 2, 4), 255, np.uint8)
    opaque[..., 0] = 7
    assert (composite_on_white(opaque)[..., 0] == 7).all()


@pytest.mark.parametrize("ds", [32, 16, 24])
def test_read_at_downsample_grid(slide_path, ds):
    with SlideReader(slide_path) as r:
        img = r.read_at_downsample(ds)
        assert img.shape == (-(-H // ds), -(-W // ds), 3) and img.dtype == np.uint8
        # Output pixel (r, c) is level-0 cell [ds*c, ds*(c+1)): compare with a level-0 read.
        row, col = img.shape[0] // 2, img.shape[1] // 3
        cell = r.read_region((col * ds, row * ds), 0, (ds, ds)).reshape(-1, 3).mean(axis=0)
        assert np.abs(img[row, col].astype(float) - cell).max() < 12
        # Banded reading (for slides without a pyramid) gives the same picture.
        banded = r.read_at_downsample(ds, max_region_px=5000)
        assert np.abs(banded.astype(int) - img).mean() < 2


# --- bad files: one clear error each ------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match=r"nope\.tif: no such slide file"):
        SlideReader(tmp_path / "nope.tif")


def test_directory(tmp_path):
    with pytest.raises(SlideError, match="is a directory"):
        SlideReader(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(SlideError, match=r"empty\.tif: empty file \(0 bytes\)"):
        SlideReader(path)


def test_unsupported_text_file(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a slide\n" * 20)
    with pytest.raises(SlideError, match="not a whole-slide image format OpenSlide supports"):
        SlideReader(path)


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_file(tmp_path, slide_path, fraction):
    data = open(slide_path, "rb").read()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideError, match=r"cut\.tif: truncated file: page \d+ needs \d+ bytes but the file has"):
        SlideReader(path)


def test_header_only_tiff(tmp_path, slide_path):
    path = tmp_path / "stub.tif"
    path.write_bytes(open(slide_path, "rb").read()[:64])
    with pytest.raises(SlideError, match=r"stub\.tif: truncated or corrupt TIFF"):
        SlideReader(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, slide_path):
    path = tmp_path / "locked.tif"
    path.write_bytes(b"II*\x00")
    path.chmod(0)
    with pytest.raises(SlideError, match="permission denied"):
        SlideReader(path)


def test_read_after_close(slide_path):
    r = SlideReader(slide_path)
    r.close()
    r.close()  # idempotent
    with pytest.raises(SlideError, match="read after close"):
        r.read_region((0, 0), 0, (4, 4))


def test_close_waits_for_reads_in_flight_then_refuses_new_ones(cohort):
    # tf.data prefetch threads may still be reading when a pipeline is closed;
    # OpenSlide aborts the whole process if a handle is closed under a read.
    import threading

    from pfascannet.slide.reader import SlideError, SlideReader

    reader = SlideReader(sorted((cohort / "images").glob("*.tif"))[0])
    refused, started = [], threading.Barrier(4)

    def read_many():
        started.wait()
        for i in range(400):
            try:
                reader.read_region((8 * i, 8 * i), 0, (512, 512))
            except SlideError as exc:
                refused.append(str(exc))
                return

    threads = [threading.Thread(target=read_many) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait()
    reader.close()
    for t in threads:
        t.join()
    assert len(refused) == 3 and all("read after close()" in m for m in refused)
