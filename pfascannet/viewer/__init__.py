"""``pfascannet view``: a scan folder in the browser, slide by slide, with the map, the lesions and the truth on top.

* ``catalogue``  what a scan folder holds, slide by slide (maps, lesions, contours, the slide files it recorded),
  and the one rule for which files the server may read (inside the scan folder, no symlink out of it);
* ``truth``      where a scan's ground truth is (reference list, ASAP XML, masks) and its outlines per slide;
* ``tiles``      Deep Zoom tiles of a slide (``openslide.deepzoom``) and of its probability map (rendered from
  the map once per slide and zoom level, tissue only);
* ``server``     a read-only stdlib HTTP server over those, plus the pages in ``static/`` (OpenSeadragon,
  vendored unmodified: ``static/openseadragon/VERSION.txt``).
"""

from urllib.parse import quote as _quote

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
"""Where ``pfascannet view`` listens unless told otherwise (the demo's report links assume it)."""


def slide_url(slide: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The URL of a slide's page on a viewer at ``host:port``."""
    return f"http://{host}:{port}/slide/{_quote(slide, safe='')}"
