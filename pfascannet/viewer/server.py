"""The viewer's read-only HTTP server (stdlib ``http.server``, one thread per request).

Routes (every one GET or HEAD; any other method gets 405)::

  /                                 the slide list (static/list.html)
  /slide/<id>                       a slide's page (static/slide.html)
  /api/slides                       the list's rows (JSON)
  /api/slide/<id>                   a slide's page data: score, truth, lesions, contours, problems (JSON)
  /dzi/<id>.dzi, /dzi/<id>_files/<level>/<col>_<row>.jpeg         the slide's Deep Zoom tiles
  /overlay/<id>/t<pct>.dzi, /overlay/<id>/t<pct>_files/<level>/<col>_<row>.png
                                    the map's tiles, transparent below pct % and off tissue
  /thumb/<id>.png                   the list's thumbnail
  /files/<sub>/<name>               a scan output to download (catalogue.DOWNLOADABLE)
  /static/<path>                    the package's scripts, styles and OpenSeadragon

A slide id in a URL is looked up in the catalogue, never joined to a path;
``/files`` goes through ``ScanCatalogue.download`` (no ``..``, no absolute
path, no symlink out of the scan folder) and ``/static`` through a table of
the package's files made at start-up.  Anything else is 404.  A slide that
cannot be opened or a map that cannot be read makes that slide's page show
the error; the server goes on.  Bound to a loopback address, the server also
refuses requests whose ``Host`` is not a loopback name (DNS rebinding: a web
page elsewhere cannot read the slides through the user's browser).
"""

from __future__ import annotations

import collections
import json
import logging
import mimetypes
import os
import re
import socket
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from pfascannet.errors import PfaError
from pfascannet.evaluation.features import read_probability_map
from pfascannet.inference.outputs import read_scanned_png
from pfascannet.layout import SCAN_REL
from pfascannet.viewer.catalogue import ScanCatalogue
from pfascannet.viewer.tiles import MapOverlay, SlidePyramid, thumbnail_png

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SLIDE_TILE_CACHE = 4096
"""JPEG tiles kept in memory (about 15 kB each)."""

_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_TILE = re.compile(r"^(\d{1,2})/(\d{1,6})_(\d{1,6})\.(jpeg|png)$")
_THRESHOLD = re.compile(r"^t(\d{1,2})$")

log = logging.getLogger("pfascannet.viewer")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class _LruBytes:
    def __init__(self, size: int):
        self.size, self._items, self._lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class _Once:
    """A value made on first use by one thread, or the error that making it raised (as text)."""

    def __init__(self, make: Callable):
        self._make, self._lock, self._done, self.value, self.error = make, threading.Lock(), False, None, None

    def get(self):
        with self._lock:
            if not self._done:
                try:
                    self.value = self._make()
                except PfaError as exc:
                    self.error = str(exc)
                except Exception as exc:  # noqa: BLE001  (a broken file must not stop the server)
                    self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                self._done = True
        return self.value, self.error


class ViewerApp:
    """The viewer's state: the catalogue, opened slides and overlays (opened on first use), caches."""

    def __init__(self, catalogue: ScanCatalogue):
        self.catalogue = catalogue
        self._pyramids = {sid: _Once(self._pyramid_maker(sid)) for sid in catalogue.order}
        self._overlays = {sid: _Once(self._overlay_maker(sid)) for sid in catalogue.order}
        self._thumbs = {sid: _Once(self._thumb_maker(sid)) for sid in catalogue.order}
        self.slide_tiles = _LruBytes(SLIDE_TILE_CACHE)
        self.static = {}
        for folder, _, names in os.walk(STATIC_DIR):
            for name in names:
                path = os.path.join(folder, name)
                self.static[os.path.relpath(path, STATIC_DIR).replace(os.sep, "/")] = path

    def _pyramid_maker(self, sid: str):
        def make():
            path = self.catalogue.entries[sid].slide_path
            if path is None:
                raise PfaError(f"{sid}: the slide file the scan read is not there any more "
                               "(start the viewer with --slides pointing at where it is now)")
            return SlidePyramid(path)
        return make

    def _overlay_maker(self, sid: str):
        def make():
            entry = self.catalogue.entries[sid]
            if entry.problem:
                raise PfaError(entry.problem)
            pyramid, error = self.pyramid(sid)
            if error:
                raise PfaError("the slide cannot be opened, so its map cannot be placed on it")
            npy = self.catalogue.scan_file(SCAN_REL.map_npy(sid))
            prob, meta = read_probability_map(npy)
            scanned_rel = SCAN_REL.scanned_png(sid)
            scanned_path = self.catalogue.scan_file(scanned_rel)
            tissue = read_scanned_png(scanned_path, prob.shape) if scanned_path else None
            return MapOverlay(prob, int(meta["stride_px"]), pyramid.level_dimensions, tissue)
        return make

    def _thumb_maker(self, sid: str):
        def make():
            pyramid, error = self.pyramid(sid)
            if error:
                raise PfaError(error)
            overlay, _ = self.overlay(sid)
            return thumbnail_png(pyramid, overlay)
        return make

    def pyramid(self, sid: str):
        return self._pyramids[sid].get()

    def overlay(self, sid: str):
        return self._overlays[sid].get()

    def thumbnail(self, sid: str):
        return self._thumbs[sid].get()

    def slides_json(self) -> dict:
        cat = self.catalogue
        return {"scan_dir": cat.scan_dir, "truth": cat.truth_sources.describe(),
                "slides": [cat.summary(sid) for sid in cat.order]}

    def slide_json(self, sid: str) -> dict:
        cat = self.catalogue
        pyramid, slide_error = self.pyramid(sid)
        overlay, map_error = self.overlay(sid) if pyramid is not None else (None, None)
        lesions, lesions_error = cat.lesions(sid)
        contours, contours_error = cat.contours(sid)
        outlines, truth_error = cat.outlines(sid)
        prev_id, next_id = cat.neighbours(sid)
        entry = cat.entries[sid]
        meta = entry.meta or {}
        return {
            **cat.summary(sid),
            "scan_dir": cat.scan_dir,
            "slide_path": entry.slide_path,
            "prev": prev_id, "next": next_id,
            "index": cat.order.index(sid), "count": len(cat.order),
            "dimensions": list(pyramid.dimensions) if pyramid else meta.get("dimensions"),
            "mpp": cat.slide_mpp(sid, pyramid),
            "stride_px": meta.get("stride_px"),
            "threshold": meta.get("threshold"),
            "slide_error": slide_error,
            "map_error": None if overlay is not None else (map_error or entry.problem),
            "has_overlay": overlay is not None,
            "lesions": lesions, "lesions_error": lesions_error,
            "contours": contours, "contours_error": contours_error,
            "truth": outlines, "truth_error": truth_error,
            "files": {k: f"/files/{p}" for k, p in (("lesions", SCAN_REL.lesions_csv(sid)),
                                                      ("geojson", SCAN_REL.geojson(sid)),
                                                      ("xml", SCAN_REL.asap_xml(sid)),
                                                      ("heatmap", SCAN_REL.heatmap_png(sid)))
                      if cat.download(p)},
        }


class ViewerHandler(BaseHTTPRequestHandler):
    """Routes GET/HEAD requests (module docstring); refuses every other method."""

    server_version = "pfascannet-view"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> ViewerApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # one line per request is noise on a viewer's terminal
        log.debug("%s " + fmt, self.address_string(), *args)

    # -------------------------------------------------------------- methods

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _refuse(self):
        # The request's body is never read, so the connection cannot carry another request.
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only viewer: GET and HEAD only\n", "text/plain",
                   extra={"Allow": "GET, HEAD", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    # -------------------------------------------------------------- plumbing

    def _send(self, status, body: bytes, ctype: str, head: bool = False, cache: str = "no-store",
              extra: Optional[dict] = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, head: bool):
        self._send(HTTPStatus.OK, json.dumps(obj).encode(), "application/json", head)

    def _not_found(self, head: bool):
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)

    def _host_allowed(self) -> bool:
        if not self.server.loopback_only:  # type: ignore[attr-defined]
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            name = host[1:].split("]", 1)[0]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return is_loopback(name)

    def _serve(self, head: bool):
        try:
            if not self._host_allowed():
                self._send(HTTPStatus.FORBIDDEN, b"this viewer answers only to a loopback host name\n",
                           "text/plain", head)
                return
            # Not urlsplit: it reads "//etc/passwd" as a host name.  A request path is always origin-form here.
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            if not path.startswith("/"):
                self._not_found(head)
                return
            parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
            if not self._route(parts, head):
                self._not_found(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001  (one bad request must not stop the server)
            log.error("%s: %s: %s", self.path, type(exc).__name__, exc)
            try:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain", head)
            except OSError:
                pass

    def _slide(self, sid: str) -> Optional[str]:
        return sid if sid in self.app.catalogue.entries else None

    def _route(self, parts: list[str], head: bool) -> bool:
        app = self.app
        if parts in ([""], ["index.html"]):
            return self._static("list.html", head)
        kind, rest = parts[0], parts[1:]
        if kind == "slide" and len(rest) == 1 and self._slide(rest[0]):
            return self._static("slide.html", head)
        if kind == "static":
            return self._static("/".join(rest), head)
        if kind == "api" and rest == ["slides"]:
            self._json(app.slides_json(), head)
            return True
        if kind == "api" and len(rest) == 2 and rest[0] == "slide" and self._slide(rest[1]):
            self._json(app.slide_json(rest[1]), head)
            return True
        if kind == "thumb" and len(rest) == 1 and rest[0].endswith(".png") and self._slide(rest[0][:-4]):
            png, error = app.thumbnail(rest[0][:-4])
            if png is None:  # the list shows why (the slide is only opened now, on first use)
                self._send(HTTPStatus.NOT_FOUND, f"{error}\n".encode(), "text/plain; charset=utf-8", head)
                return True
            self._send(HTTPStatus.OK, png, "image/png", head, cache="private, max-age=300")
            return True
        if kind == "dzi":
            return self._slide_tiles(rest, head)
        if kind == "overlay":
            return self._overlay_tiles(rest, head)
        if kind == "files":
            target = app.catalogue.download("/".join(rest))
            if target is None:
                return False
            return self._file(target, head, attachment=True)
        return False

    def _static(self, rel: str, head: bool) -> bool:
        path = self.app.static.get(rel)
        return path is not None and self._file(path, head, cache="private, max-age=60")

    def _file(self, path: str, head: bool, attachment: bool = False, cache: str = "no-store") -> bool:
        with open(path, "rb") as f:
            body = f.read()
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        extra = {"Content-Disposition": f'attachment; filename="{os.path.basename(path)}"'} if attachment else None
        self._send(HTTPStatus.OK, body, ctype, head, cache=cache, extra=extra)
        return True

    def _slide_tiles(self, rest: list[str], head: bool) -> bool:
        app = self.app
        if len(rest) == 1 and rest[0].endswith(".dzi") and self._slide(rest[0][:-4]):
            pyramid, _ = app.pyramid(rest[0][:-4])
            if pyramid is None:
                return False
            self._send(HTTPStatus.OK, pyramid.dzi("jpeg").encode(), "application/xml", head)
            return True
        if len(rest) == 3 and rest[0].endswith("_files") and self._slide(rest[0][:-6]):
            sid = rest[0][:-6]
            m = _TILE.match("/".join(rest[1:]))
            pyramid, _ = app.pyramid(sid)
            if m is None or m.group(4) != "jpeg" or pyramid is None:
                return False
            level, col, row = (int(m.group(i)) for i in (1, 2, 3))
            try:
                body = app.slide_tiles.get((sid, level, col, row), lambda: pyramid.tile_jpeg(level, col, row))
            except ValueError:
                return False
            self._send(HTTPStatus.OK, body, "image/jpeg", head, cache="private, max-age=300")
            return True
        return False

    def _overlay_tiles(self, rest: list[str], head: bool) -> bool:
        app = self.app
        if not rest or not self._slide(rest[0]):
            return False
        sid = rest[0]
        overlay, _ = app.overlay(sid)
        pyramid, _ = app.pyramid(sid)
        if overlay is None or pyramid is None:
            return False
        if len(rest) == 2 and rest[1].endswith(".dzi") and _THRESHOLD.match(rest[1][:-4]):
            self._send(HTTPStatus.OK, pyramid.dzi("png").encode(), "application/xml", head)
            return True
        if len(rest) == 4 and rest[1].endswith("_files") and _THRESHOLD.match(rest[1][:-6]):
            pct = int(_THRESHOLD.match(rest[1][:-6]).group(1))
            m = _TILE.match("/".join(rest[2:]))
            if m is None or m.group(4) != "png":
                return False
            try:
                body = overlay.tile_png(int(m.group(1)), int(m.group(2)), int(m.group(3)), pct)
            except ValueError:
                return False
            self._send(HTTPStatus.OK, body, "image/png", head, cache="private, max-age=300")
            return True
        return False


class ViewerServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that carries the :class:`ViewerApp`."""

    daemon_threads = True

    def __init__(self, app: ViewerApp, host: str, port: int):
        self.app = app
        self.loopback_only = is_loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def make_server(catalogue: ScanCatalogue, host: str = "127.0.0.1", port: int = 8765) -> ViewerServer:
    """A viewer server bound to ``host:port`` (port 0: a free one); call ``serve_forever()``.

    Raises:
      OSError: the address is in use or cannot be bound.
    """
    return ViewerServer(ViewerApp(catalogue), host, port)


def serve_in_thread(server: ViewerServer) -> threading.Thread:
    """Runs ``server`` in a daemon thread (tests, benchmarks); stop it with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="pfascannet-view", daemon=True)
    thread.start()
    return thread

