"""Look at a scan in the browser: every slide with its map, lesions, contours and truth on top.

Starts a local, read-only web server over a scan folder (``pfascannet scan
--out S``) and prints its URL.  The slide list shows every slide with its
score, its truth label and a thumbnail; a slide's page zooms through the
slide's own pyramid with the probability map (opacity, threshold), the
lesion candidates (a list; a click zooms to one), the contours and the
ground-truth outlines on top, each switchable, and a scale bar.  Nothing is
fetched from the internet: every script ships with the package.

The truth is looked up beside the slides the scan read (the cohort layout:
``C/images/`` -> ``C/slides.csv``, ``C/annotations/``, ``C/masks/``);
``--reference``, ``--annotations`` and ``--masks_dir`` say where it is instead.

Examples::

    pfascannet view demo_out/scan
    pfascannet view S --reference C/slides.csv --annotations C/annotations --port 8800
    pfascannet view S --slides /data/camelyon16/testing/images     (the slides moved since the scan)

It serves only the slides and files of that scan, on 127.0.0.1 unless
``--host`` says otherwise (then anyone who can reach the port sees the
slides: a warning says so).  Ctrl-C stops it (exit status 0).
Exit status 2: bad flags, not a scan folder, an unreadable reference, a port in use.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from typing import Optional

from absl import flags

from pfascannet import camelyon
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.inference import slide_list
from pfascannet.settings import setting
from pfascannet.viewer import DEFAULT_HOST, DEFAULT_PORT


@dataclasses.dataclass(frozen=True)
class ViewCommand:
    """The flags of ``pfascannet view``."""

    scan_dir: Optional[str] = setting(None, help="The scan folder (it holds maps/<slide>.npy and .json); may also be "
                                                 "given as the first argument: `pfascannet view S`.")
    host: str = setting(DEFAULT_HOST, help="Address to listen on; anything but a loopback address exposes the "
                                           "slides to the network.")
    port: int = setting(DEFAULT_PORT, check=settings_lib.in_range(0, 65535),
                        help="Port to listen on (0: any free port).")
    reference: Optional[str] = setting(
        None, help="Slide labels: the cohort's slides.csv, a Camelyon16 reference.csv or a Camelyon17 stage CSV; "
                   "default: the one beside the scanned slides.")
    annotations: Optional[str] = setting(
        None, help="ASAP XML for the truth outlines: a folder of <slide>.xml files or a zip of them "
                   "(lesion_annotations.zip); default: the one beside the scanned slides.")
    masks_dir: Optional[str] = setting(
        None, help="Folder of Camelyon mask TIFFs (<slide>_mask.tif), outlined for slides without XML; default: the "
                   "one beside the scanned slides.")
    slides: Optional[str] = setting(
        None, help="Where the slides are now (a folder, a slide or a list file) when they moved since the scan; "
                   "default: the paths the scan recorded.")

    def __post_init__(self):
        settings_lib.check_fields(self, PfaError)


FLAGS = flags.FLAGS
SETTINGS = (ViewCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def prepare_argv(argv: list[str]) -> list[str]:
    """``pfascannet view S [flags]``: a first argument that is not a flag is the scan folder."""
    if len(argv) > 1 and not argv[1].startswith("-"):
        return [argv[0], f"--scan_dir={argv[1]}", *argv[2:]]
    return argv


def _folder(flag: str, value):
    if value is not None and not os.path.isdir(value):
        raise PfaError(f"--{flag} {value}: no such folder")
    return value


def main(argv) -> None:
    del argv
    from pfascannet.viewer import catalogue, server, truth  # noqa: PLC0415  (keeps --help light)

    if not FLAGS.scan_dir:
        raise PfaError("give the scan folder: `pfascannet view S` (or --scan_dir S)")
    if not os.path.isdir(FLAGS.scan_dir):
        raise PfaError(f"{FLAGS.scan_dir}: no such folder")
    settings_lib.from_flags(ViewCommand, FLAGS)  # the declared checks (--port)
    if FLAGS.reference is not None and not os.path.isfile(FLAGS.reference):
        raise PfaError(f"--reference {FLAGS.reference}: no such file")
    paths = None
    if FLAGS.slides:
        paths = {camelyon.slide_id(p): p for p in slide_list.list_slides(FLAGS.slides)}
    annotations = FLAGS.annotations
    if annotations is not None and not truth.annotation_source(annotations):
        raise PfaError(f"--annotations {annotations}: not a folder of ASAP XML files or a .zip of them")
    masks = _folder("masks_dir", FLAGS.masks_dir)
    cat = catalogue.ScanCatalogue(FLAGS.scan_dir, slide_paths=paths, truth_override=truth.TruthSources(
        FLAGS.reference, annotations, masks))
    try:
        httpd = server.make_server(cat, FLAGS.host, FLAGS.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PfaError(f"port {FLAGS.port} on {FLAGS.host} is in use; choose another with --port "
                           "(--port 0 picks a free one)") from None
        raise PfaError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({exc.strerror or exc})") from None
    if not server.is_loopback(FLAGS.host):
        print(f"warning: listening on {FLAGS.host}, not on this machine alone: anyone who can reach port "
              f"{httpd.server_address[1]} can see these slides (there is no login); use --host 127.0.0.1 "
              "to keep them local", file=sys.stderr, flush=True)
    print(f"pfascannet view: {len(cat.order)} slides of {cat.scan_dir}\n"
          f"  truth: {cat.truth_sources.describe()}\n"
          f"  open {httpd.url} in a browser (Ctrl-C stops the viewer)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("pfascannet view: stopped", file=sys.stderr)
    finally:
        httpd.server_close()
