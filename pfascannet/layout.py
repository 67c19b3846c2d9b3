"""The folders the stages write and read, as small typed objects (ARCHITECTURE.md "Files between stages").

Every path inside a cohort (C/), a training run (W/), an export (M/), a scan
(S/) or a report (R/) folder is spelled here, once; the rest of the package
asks these objects (``ScanFolder(s).map_npy(slide)``) and never joins those
names by hand (``tests/test_layout.py`` greps for it).  The objects only name
paths: they create, check and read nothing, so ``str`` in and ``str`` out,
exactly ``os.path.join(root, ...)`` of the root as given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

# ----------------------------------------------------------------------------
# C/: a cohort (``pfascannet cohort``; the CAMELYON layouts are datasets.py's)


@dataclasses.dataclass(frozen=True)
class CohortFolder:
    """``C/``: ``images/ annotations/ masks/ tissue/ slides.csv stages.csv lesions.csv cohort.json``."""

    root: str

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def annotations(self) -> str:
        return os.path.join(self.root, "annotations")

    @property
    def masks(self) -> str:
        return os.path.join(self.root, "masks")

    @property
    def tissue(self) -> str:
        return os.path.join(self.root, "tissue")

    @property
    def slides_csv(self) -> str:
        return os.path.join(self.root, "slides.csv")

    @property
    def stages_csv(self) -> str:
        return os.path.join(self.root, "stages.csv")

    @property
    def lesions_csv(self) -> str:
        return os.path.join(self.root, "lesions.csv")

    @property
    def mimics_csv(self) -> str:
        """``mimics.csv``: the synthetic generator's hard mimics (``camelyon_files.MIMICS_COLUMNS``); not a Camelyon file."""
        return os.path.join(self.root, "mimics.csv")

    @property
    def cohort_json(self) -> str:
        return os.path.join(self.root, "cohort.json")

    def image(self, slide: str) -> str:
        """``images/<slide>.tif`` (the file the generator writes; reading goes through ``datasets.SlideIndex``)."""
        return os.path.join(self.images, f"{slide}.tif")

    def annotation(self, slide: str) -> str:
        """``annotations/<slide>.xml`` (ASAP XML; lesion slides only)."""
        return os.path.join(self.annotations, f"{slide}.xml")

    def mask(self, slide: str) -> str:
        """``masks/<slide>_mask.tif`` (tumour 255; lesion slides only)."""
        return os.path.join(self.masks, f"{slide}_mask.tif")

    def tissue_png(self, slide: str) -> str:
        """``tissue/<slide>_tissue.png`` (tissue truth at downsample 32)."""
        return os.path.join(self.tissue, f"{slide}_tissue.png")


# ----------------------------------------------------------------------------
# W/: a training run (``pfascannet train --workdir W``)

SAMPLES_CSV = "samples.csv"
"""The sampled patches (``sampling.save_samples``): in a run folder, and beside ``pfascannet tfrecords``' shards."""


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """``W/``: ``checkpoints/ config.json samples.csv hard_negatives*.csv mining/step_<N>/ tensorboard/
    final.weights.h5``."""

    root: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def config_json(self) -> str:
        return os.path.join(self.root, "config.json")

    @property
    def samples_csv(self) -> str:
        return os.path.join(self.root, SAMPLES_CSV)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, "tensorboard")

    @property
    def final_weights(self) -> str:
        return os.path.join(self.root, "final.weights.h5")

    def hard_negatives_csv(self, step: int, first: bool) -> str:
        """A hard-negative round's negatives: ``hard_negatives.csv`` for the first round (the name runs made
        before rounds existed gave it), ``hard_negatives_step<N>.csv`` for later ones."""
        return os.path.join(self.root, "hard_negatives.csv" if first else f"hard_negatives_step{step}.csv")

    def mining_dir(self, step: int) -> str:
        """``mining/step_<N>/``: the round's whole-slide scan of the training slides (a ``ScanFolder``'s root)."""
        return os.path.join(self.root, "mining", f"step_{step}")


# ----------------------------------------------------------------------------
# M/: an export (``pfascannet export --out M``)

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "detector.keras"
EXPORT_JSON = "export.json"


@dataclasses.dataclass(frozen=True)
class ExportFolder:
    """``M/``: ``saved_model/ detector.keras export.json`` (export.json written last)."""

    root: str

    @property
    def saved_model(self) -> str:
        return os.path.join(self.root, SAVED_MODEL_DIR)

    @property
    def keras(self) -> str:
        return os.path.join(self.root, KERAS_FILE)

    @property
    def export_json(self) -> str:
        return os.path.join(self.root, EXPORT_JSON)


# ----------------------------------------------------------------------------
# S/: a scan (``pfascannet scan --out S``; ``pfascannet lesions --scan_dir S``)

SCAN_MAPS = "maps"
SCAN_LESIONS = "lesions"
SCAN_HEATMAPS = "heatmaps"
SCAN_CONTOURS = "contours"
SCAN_PARTIAL = "partial"
SCAN_LOCKS = "locks"


@dataclasses.dataclass(frozen=True)
class ScanFolder:
    """``S/``: ``maps/ lesions/ heatmaps/ contours/ partial/ locks/ slide_scores.csv scan_config[.shardIofN].json``."""

    root: str

    SLIDE_SUBDIRS = (SCAN_MAPS, SCAN_LESIONS, SCAN_HEATMAPS, SCAN_CONTOURS, SCAN_PARTIAL)
    """The folders a slide's scan writes into (``locks/`` is the lock file's)."""
    POST_SUBDIRS = (SCAN_MAPS, SCAN_LESIONS, SCAN_HEATMAPS, SCAN_CONTOURS)
    """The folders the post-processing writes into."""

    def sub(self, name: str) -> str:
        """One of the folders above (``SCAN_MAPS`` ...)."""
        return os.path.join(self.root, name)

    @property
    def maps(self) -> str:
        return os.path.join(self.root, SCAN_MAPS)

    @property
    def lesions(self) -> str:
        return os.path.join(self.root, SCAN_LESIONS)

    @property
    def heatmaps(self) -> str:
        return os.path.join(self.root, SCAN_HEATMAPS)

    @property
    def contours(self) -> str:
        return os.path.join(self.root, SCAN_CONTOURS)

    @property
    def partial(self) -> str:
        return os.path.join(self.root, SCAN_PARTIAL)

    @property
    def locks(self) -> str:
        return os.path.join(self.root, SCAN_LOCKS)

    @property
    def slide_scores_csv(self) -> str:
        return os.path.join(self.root, "slide_scores.csv")

    def scan_config_json(self, shard: Optional[tuple[int, int]] = None) -> str:
        """``scan_config.json``, or ``scan_config.shard<i>of<N>.json`` for shard ``(i, N)``."""
        return os.path.join(self.root, "scan_config.json" if shard is None
                            else f"scan_config.shard{shard[0]}of{shard[1]}.json")

    @property
    def scan_config_glob(self) -> str:
        """The glob pattern of every scan_config (whole scan and shards)."""
        return os.path.join(self.root, "scan_config*.json")

    @property
    def map_json_glob(self) -> str:
        """The glob pattern of every map sidecar."""
        return os.path.join(self.maps, "*.json")

    def map_npy(self, slide: str) -> str:
        return os.path.join(self.maps, f"{slide}.npy")

    def map_json(self, slide: str) -> str:
        return os.path.join(self.maps, f"{slide}.json")

    def map_tif(self, slide: str) -> str:
        return os.path.join(self.maps, f"{slide}_map.tif")

    def scanned_png(self, slide: str) -> str:
        return os.path.join(self.maps, f"{slide}_scanned.png")

    def lesions_csv(self, slide: str) -> str:
        return os.path.join(self.lesions, f"{slide}.csv")

    def heatmap_png(self, slide: str) -> str:
        return os.path.join(self.heatmaps, f"{slide}.png")

    def geojson(self, slide: str) -> str:
        return os.path.join(self.contours, f"{slide}.geojson")

    def asap_xml(self, slide: str) -> str:
        return os.path.join(self.contours, f"{slide}.xml")

    def checkpoint(self, slide: str, member: int) -> str:
        """``partial/<slide>.m<k>.npz``: the checkpoint of ensemble member ``k`` while the slide is scanned."""
        return os.path.join(self.partial, f"{slide}.m{member}.npz")

    @staticmethod
    def checkpoint_of(name: str) -> Optional[tuple[str, int]]:
        """``(slide, member)`` of a file name in ``partial/`` (``checkpoint``'s), or None for another file."""
        if not name.endswith(".npz"):
            return None
        stem, dot, member = name[: -len(".npz")].rpartition(".m")
        return (stem, int(member)) if dot and member.isdigit() else None

    def lock(self, slide: str) -> str:
        """``locks/<slide>.lock``: flock held by the process writing the slide's outputs."""
        return os.path.join(self.locks, f"{slide}.lock")

    def slide_files(self, slide: str) -> dict[str, str]:
        """Every output file of one slide, by kind (``npy json tif scanned lesions heatmap geojson xml``)."""
        return {
            "npy": self.map_npy(slide),
            "json": self.map_json(slide),
            "tif": self.map_tif(slide),
            "scanned": self.scanned_png(slide),
            "lesions": self.lesions_csv(slide),
            "heatmap": self.heatmap_png(slide),
            "geojson": self.geojson(slide),
            "xml": self.asap_xml(slide),
        }


SCAN_REL = ScanFolder("")
"""The same names relative to S (``maps/<slide>.npy``): the viewer's file rule and download URLs."""


# ----------------------------------------------------------------------------
# R/: evaluation reports (``pfascannet froc|auc|pn-stage|kappa --out R/<metric>``; table1, eval-heldout)

REPORT_METRICS = ("froc", "auc", "pn_stage", "kappa", "slide_classifier")
FROC_PNG = "froc.png"
ROC_PNG = "roc.png"
PN_SUBMISSION_CSV = "submission.csv"
"""``pn_stage/``: the predicted stages as a Camelyon17 CSV (beside ``features.csv``, the forest's inputs)."""
PN_FEATURES_CSV = "features.csv"


@dataclasses.dataclass(frozen=True)
class ReportFolder:
    """``R/``: one folder per metric, ``R/<metric>/*.json|*.md`` (``REPORT_METRICS``)."""

    root: str

    def metric(self, name: str) -> str:
        if name not in REPORT_METRICS:
            raise ValueError(f"unknown report {name!r}; one of {REPORT_METRICS}")
        return os.path.join(self.root, name)

    @property
    def froc(self) -> str:
        return self.metric("froc")

    @property
    def auc(self) -> str:
        return self.metric("auc")

    @property
    def pn_stage(self) -> str:
        return self.metric("pn_stage")

    @property
    def kappa(self) -> str:
        return self.metric("kappa")

    @property
    def slide_classifier(self) -> str:
        """The second named slide score's AUC report (``evaluation.slide_classifier``)."""
        return self.metric("slide_classifier")

    def report_md(self, metric: str) -> str:
        """``<metric>/<metric>.md`` (``metric_reports.write_report``; beside it ``<metric>.json``)."""
        return os.path.join(self.metric(metric), f"{metric}.md")

    @property
    def froc_png(self) -> str:
        return os.path.join(self.froc, FROC_PNG)

    @property
    def roc_png(self) -> str:
        return os.path.join(self.auc, ROC_PNG)

    @property
    def pn_submission_csv(self) -> str:
        """``pn_stage/submission.csv``: the predicted stages as a Camelyon17 CSV."""
        return os.path.join(self.pn_stage, PN_SUBMISSION_CSV)
