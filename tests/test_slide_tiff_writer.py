"""The pyramidal TIFF writer: OpenSlide reads every level, pixels and mpp back."""

from __future__ import annotations

import os

import numpy as np
import openslide
import pytest

from pfascannet.slide.tiff_writer import TiffWriteError, pyramid_dimensions, write_pyramid_tiff


def _pattern(x, y, w, h):
    yy, xx = np.mgrid[y:y + h, x:x + w]
    return np.stack([(xx * 7) % 251, (yy * 5) % 241, ((xx // 3) ^ (yy // 3)) % 256], -1).astype(np.uint8)


def _rgb(slide, level, xy=(0, 0), size=None):
    size = size or slide.level_dimensions[level]
    return np.asarray(slide.read_region(xy, level, size))


def test_lossless_rgb_pyramid_reads_back_exactly(tmp_path):
    width, height, tile = 1100, 700, 256
    calls = []

    def source(x, y, w, h):
        calls.append((x, y, w, h))
        if x >= 768:  # right-hand tiles are pure background
            return None
        return _pattern(x, y, w, h)

    path = tmp_path / "s.tif"
    dims = write_pyramid_tiff(path, (width, height), source, tiff_tile_px=tile, mpp=0.5, compression="deflate",
                              min_side_px=300, workers=2)
    assert dims == [(1100, 700), (550, 350), (275, 175)] == pyramid_dimensions((width, height), 300)
    # Tile by tile: no call ever asks for more than one tile.
    assert max(w for _, _, w, _ in calls) <= tile and max(h for _, _, _, h in calls) <= tile
    assert len(calls) == 5 * 3
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_dimensions == tuple(dims)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, abs=1e-6)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5, abs=1e-6)
        level0 = _rgb(s, 0)
        assert (level0[..., 3] == 255).all()
        expected = np.full((height, width, 3), 255, np.uint8)
        expected[:, :768] = _pattern(0, 0, 768, height)
        np.testing.assert_array_equal(level0[..., :3], expected)
        # Level 1 is the rounded 2x2 mean of level 0.
        e = expected.astype(np.uint32)
        mean = ((e[0::2, 0::2] + e[1::2, 0::2] + e[0::2, 1::2] + e[1::2, 1::2] + 2) // 4).astype(np.uint8)
        np.testing.assert_array_equal(_rgb(s, 1)[..., :3], mean)
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]  # no scratch or temporary files left


def test_jpeg_rgb_is_close_and_background_colour_is_kept(tmp_path):
    path = tmp_path / "j.tif"
    glass = (240, 238, 245)
    write_pyramid_tiff(path, (1500, 1200), lambda x, y, w, h: _pattern(x, y, w, h) if x < 512 else None,
                       mpp=0.243, background=glass, quality=95)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 2  # 1500 -> 750 <= 1024
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.243, abs=1e-6)
        region = _rgb(s, 0, (0, 0), (512, 512))[..., :3].astype(int)
        assert np.abs(region - _pattern(0, 0, 512, 512)).mean() < 12  # lossy, but the same image
        far = _rgb(s, 0, (1100, 800), (300, 300))[..., :3]
        assert np.abs(far.astype(int) - np.array(glass)).max() <= 2


def test_single_channel_mask_with_fixed_levels_and_max_resampling(tmp_path):
    # A 3x3 px "tumour": max resampling keeps it visible down to level 5.
    def source(x, y, w, h):
        tile = np.zeros((h, w), np.uint8)
        if x <= 700 < x + w and y <= 400 < y + h:
            tile[400 - y - 1:400 - y + 2, 700 - x - 1:700 - x + 2] = 255
            return tile
        return None

    path = tmp_path / "m.tif"
    dims = write_pyramid_tiff(path, (1000, 600), source, channels=1, compression="deflate", resample="max",
                              num_levels=6, mpp=0.243)
    assert len(dims) == 6 and dims[5] == (32, 19)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 6
        m5 = _rgb(s, 5)[..., 0]
        assert m5.max() == 255 and m5[400 // 32, 700 // 32] == 255 and (m5 == 255).sum() == 1


def test_level_source_renders_lower_levels(tmp_path):
    seen = []

    def level_source(level, x, y, w, h):
        seen.append(level)
        return np.full((h, w), 10 * (level + 1), np.uint8)

    path = tmp_path / "l.tif"
    write_pyramid_tiff(path, (600, 600), lambda x, y, w, h: level_source(0, x, y, w, h), channels=1,
                       compression="deflate", level_source=level_source, num_levels=3)
    assert sorted(set(seen)) == [0, 1, 2]
    with openslide.OpenSlide(str(path)) as s:
        assert [int(_rgb(s, k)[..., 0].mean()) for k in range(3)] == [10, 20, 30]


@pytest.mark.parametrize(
    "kwargs, source, message",
    [
        (dict(tiff_tile_px=100), None, "multiple of 16"),
        (dict(compression="lzw"), None, "compression"),
        (dict(channels=1, dtype=np.float32, compression="jpeg"), None, "JPEG"),
        (dict(), lambda x, y, w, h: np.zeros((h, w), np.uint8), "shape"),
        (dict(), lambda x, y, w, h: np.zeros((h, w, 3), np.float32), "dtype"),
    ],
)
def test_bad_arguments_raise_clear_errors_and_leave_nothing(tmp_path, kwargs, source, message):
    path = tmp_path / "bad.tif"
    with pytest.raises(TiffWriteError, match=message):
        write_pyramid_tiff(path, (300, 300), source or (lambda x, y, w, h: None), **kwargs)
    assert os.listdir(tmp_path) == []
