"""ASAP XML safety and round trip, rasterising conventions, Camelyon mask TIFFs."""

import numpy as np
import pytest

from pfascannet.slide.annotations import (
    Annotation,
    AnnotationError,
    rasterize,
    read_asap_xml,
    read_mask_level,
    write_asap_xml,
    write_mask_tiff,
)


def square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def blob(cx, cy, r, n=200, phase=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + 0.25 * np.sin(3 * t + phase))
    return np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)]


def iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / max((a | b).sum(), 1)


# --- hostile and broken XML -------------------------------------------------

XXE = """<?xml version="1.0"?>
<!DOCTYPE ASAP_Annotations [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations>
<Annotation Name="&xxe;" Type="Polygon" PartOfGroup="_0"><Coordinates>
<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="5" Y="1"/><Coordinate Order="2" X="5" Y="5"/>
</Coordinates></Annotation></Annotations></ASAP_Annotations>
"""

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<ASAP_Annotations><Annotations><Annotation Name="&lol4;"/></Annotations></ASAP_Annotations>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE ASAP_Annotations SYSTEM "http://example.invalid/evil.dtd">
<ASAP_Annotations><Annotations/></ASAP_Annotations>
"""


@pytest.mark.parametrize("text", [XXE, LAUGHS, EXTERNAL_DTD], ids=["xxe", "billion_laughs", "external_dtd"])
def test_hostile_xml_is_refused_naming_the_file(tmp_path, text):
    path = tmp_path / "evil.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=r"evil\.xml: refused") as info:
        read_asap_xml(path)
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such annotation file"),
        ("", "empty annotation file"),
        ("<ASAP_Annotations><Annotations>", "malformed XML"),
        ("<svg></svg>", "not an ASAP annotation file"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a"/></Annotations></ASAP_Annotations>', "no coordinates"),
        (
            '<ASAP_Annotations><Annotations><Annotation Name="a"><Coordinates>'
            '<Coordinate Order="0" X="abc" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
            "non-numeric",
        ),
    ],
    ids=["missing", "empty", "malformed", "not_asap", "no_coords", "bad_number"],
)
def test_broken_xml_gives_one_clear_error(tmp_path, content, message):
    path = tmp_path / "a.xml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_asap_xml(path)
    assert str(path) in str(info.value)


def test_camelyon_style_file_reads_with_order_groups_and_decimal_comma(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>'
        '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"><Coordinates>'
        '<Coordinate Order="2" X="30" Y="30"/><Coordinate Order="0" X="10,5" Y="10"/>'
        '<Coordinate Order="1" X="30" Y="10"/></Coordinates></Annotation>'
        '<Annotation Name="Annotation 1" Type="Dot" PartOfGroup="_2"><Coordinates>'
        '<Coordinate Order="0" X="1" Y="2"/></Coordinates></Annotation>'
        "</Annotations><AnnotationGroups/></ASAP_Annotations>"
    )
    a, b = read_asap_xml(path)
    np.testing.assert_array_equal(a.coords_xy, [[10.5, 10], [30, 10], [30, 30]])
    assert a.is_tumour and not a.is_exclusion and a.is_area
    assert b.is_exclusion and not b.is_area  # a Dot encloses nothing


@pytest.mark.parametrize("group", ["_0", "_1", "Tumor", "tumor", "Metastasis"])
def test_tumour_groups(group):
    assert Annotation("a", group, square(0, 0, 1, 1)).is_tumour


@pytest.mark.parametrize("group", ["_2", "Exclusion", "None"])
def test_exclusion_groups(group):
    a = Annotation("a", group, square(0, 0, 1, 1))
    assert a.is_exclusion and not a.is_tumour


def test_annotation_validates_coordinates():
    with pytest.raises(AnnotationError, match=r"\(N, 2\)"):
        Annotation("a", "_0", np.zeros((3, 3)))
    with pytest.raises(AnnotationError, match="finite"):
        Annotation("a", "_0", [[0, 0], [np.nan, 1], [2, 2]])
    a = Annotation("a", "_0", [[0, 0], [1, 0], [1, 1]])
    assert a.coords_xy.dtype == np.float64 and not a.coords_xy.flags.writeable


def test_xml_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    annos = [
        Annotation("Annotation 0", "_0", blob(500.123456789, 400.5, 120)),
        Annotation("Annotation 1", "_1", rng.uniform(0, 1e5, (7, 2))),
        Annotation("hole", "_2", blob(500, 400, 30)),
        Annotation("seed", "Tumor", [[3.0, 4.0]], type="Dot"),
    ]
    path = tmp_path / "out" / "slide.xml"
    write_asap_xml(path, annos)
    back = read_asap_xml(path)
    assert back == annos
    text = path.read_text()
    assert "<AnnotationGroups>" in text and 'Name="_2"' in text
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


# --- rasterising --------------------------------------------------------------

HOLED = [Annotation("t", "_0", square(10, 10, 20, 20)), Annotation("h", "_2", square(13, 13, 17, 17))]


def test_rasterize_square_with_hole_exact_pixels():
    m = rasterize(HOLED, (30, 30))
    expected = np.zeros((30, 30), np.uint8)
    expected[10:20, 10:20] = 255  # centres 10..19 are inside [10, 20)
    expected[13:17, 13:17] = 0
    np.testing.assert_array_equal(m, expected)
    assert m.dtype == np.uint8


def test_rasterize_downsample_uses_cell_centres():
    # At ds 2 cell c has centre 2c + 0.5: inside [10, 20) for c = 5..9, in the hole for c = 7, 8.
    m = rasterize(HOLED, (30, 30), downsample=2)
    expected = np.zeros((15, 15), np.uint8)
    expected[5:10, 5:10] = 255
    expected[7:9, 7:9] = 0
    np.testing.assert_array_equal(m, expected)


def test_rasterize_area_is_unbiased_at_every_scale():
    annos = [Annotation("c", "_0", blob(3000, 2000, 800, n=400))]
    x, y = annos[0].coords_xy.T
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    for ds in (1, 8, 32):
        got = (rasterize(annos, (6000, 4000), ds) > 0).sum() * ds * ds
        # Centre sampling: no systematic growth (cv2.fillPoly would add ~half a pixel of rim).
        assert abs(got - area) / area < 0.02 * ds / 8 + 0.002, (ds, got, area)


def test_nested_and_overlapping_tumour_polygons_union():
    annos = [Annotation("a", "_0", square(0, 0, 20, 20)), Annotation("b", "_1", square(10, 10, 30, 30)),
             Annotation("c", "_0", square(2, 2, 5, 5))]
    m = rasterize(annos, (40, 40)) > 0
    assert m[15, 15] and m[3, 3] and m[25, 25] and m.sum() == 400 + 400 - 100


def test_cells_off_the_slide_are_zero_even_if_polygons_stray_there():
    annos = [Annotation("a", "_0", square(-50, -50, 150, 150))]
    m = rasterize(annos, (100, 80), origin_xy=(-10, -10), size_wh=(130, 100))
    assert m[10:90, 10:110].min() == 255
    assert m[:10].max() == 0 and m[:, :10].max() == 0 and m[90:].max() == 0 and m[:, 110:].max() == 0


@pytest.mark.parametrize("ds", [1, 4, 32])
def test_window_equals_crop_of_full_raster(ds):
    rng = np.random.default_rng(ds)
    dims = (4000, 3000)
    annos = [Annotation(f"t{i}", "_0", blob(*rng.uniform(200, 2800, 2), rng.uniform(50, 600), phase=i)) for i in range(12)]
    annos += [Annotation("h", "_2", blob(1500, 1500, 200))]
    full = rasterize(annos, dims, ds)
    assert full.shape == (-(-3000 // ds), -(-4000 // ds))
    for _ in range(6):
        c, r = rng.integers(0, full.shape[1] - 8), rng.integers(0, full.shape[0] - 8)
        w, h = rng.integers(1, 600 // ds + 8, 2)
        win = rasterize(annos, dims, ds, origin_xy=(int(c) * ds, int(r) * ds), size_wh=(int(w), int(h)))
        crop = np.zeros((h, w), np.uint8)
        part = full[r:r + h, c:c + w]
        crop[:part.shape[0], :part.shape[1]] = part
        np.testing.assert_array_equal(win, crop)


def test_rasterize_rejects_bad_arguments():
    with pytest.raises(AnnotationError, match="downsample"):
        rasterize(HOLED, (30, 30), downsample=0)
    with pytest.raises(AnnotationError, match="size"):
        rasterize(HOLED, (30, 30), size_wh=(-1, 5))
    assert rasterize([], (30, 20), 4).shape == (5, 8)


# --- mask TIFFs ---------------------------------------------------------------


def test_mask_tiff_opens_in_openslide_with_level5_equal_to_rasterize(tmp_path):
    openslide = pytest.importorskip("openslide")
    dims = (5000, 3000)
    annos = [
        Annotation("a", "_0", blob(2000, 1500, 700)),
        Annotation("hole", "_2", blob(2000, 1500, 150)),
        Annotation("edge", "Tumor", blob(4950, 80, 250)),  # runs off the slide
        Annotation("itc", "_1", blob(800, 2600, 40)),
    ]
    path = tmp_path / "tumor_001_mask.tif"
    write_mask_tiff(path, annos, dims, mpp=0.243)
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.dimensions == dims
        assert slide.level_count >= 6
        assert slide.level_dimensions[5] == (-(-5000 // 32), -(-3000 // 32))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.243)
        level5 = np.asarray(slide.read_region((0, 0), 5, slide.level_dimensions[5]))[..., 0]
        level0 = np.asarray(slide.read_region((1200, 700), 0, (1600, 1600)))[..., 0]
    finally:
        slide.close()
    expected5 = rasterize(annos, dims, 32)
    assert set(np.unique(level5)) == {0, 255}
    assert iou(level5, expected5) >= 0.99
    np.testing.assert_array_equal(level5, expected5)
    np.testing.assert_array_equal(level0, rasterize(annos, dims, 1, origin_xy=(1200, 700), size_wh=(1600, 1600)))
    np.testing.assert_array_equal(read_mask_level(path), expected5)
    np.testing.assert_array_equal(read_mask_level(path, 16), rasterize(annos, dims, 16))


def test_read_mask_level_errors(tmp_path):
    with pytest.raises(AnnotationError, match="no such mask file"):
        read_mask_level(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    with pytest.raises(AnnotationError, match="cannot read mask TIFF"):
        read_mask_level(bad)
    small = tmp_path / "small.tif"
    write_mask_tiff(small, HOLED, (64, 64))
    with pytest.raises(AnnotationError, match="no page at downsample 128"):
        read_mask_level(small, 128)


def test_rasterize_matches_point_in_polygon_reference():
    # Brute force: a cell is tumour iff its centre is in an odd number of crossings
    # of some tumour polygon and of no exclusion polygon (random floats: no ties).
    from matplotlib.path import Path

    rng = np.random.default_rng(7)
    dims, ds = (900, 700), 4
    annos = [Annotation(f"t{i}", "_0", rng.uniform(0, 900, (9, 2)) * [1, 0.75]) for i in range(5)]  # self-intersecting
    annos += [Annotation("x", "_2", blob(450, 350, 90, n=13))]
    got = rasterize(annos, dims, ds) > 0
    rows, cols = got.shape
    yy, xx = np.mgrid[0:rows, 0:cols] * ds + (ds - 1) / 2
    centres = np.c_[xx.ravel(), yy.ravel()]
    inside = lambda a: Path(a.coords_xy, closed=False).contains_points(centres)  # noqa: E731
    tumour = np.any([inside(a) for a in annos if a.is_tumour], axis=0)
    excluded = np.any([inside(a) for a in annos if a.is_exclusion], axis=0)
    expected = (tumour & ~excluded).reshape(rows, cols)
    assert (got != expected).sum() == 0
