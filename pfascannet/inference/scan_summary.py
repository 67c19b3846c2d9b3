"""What a scan reports: one result per slide, the summary of a list, and the scan's ``scan_config.json``."""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional, Sequence

from pfascannet.inference.scan_settings import ScanSettings
from pfascannet.io_utils import write_json
from pfascannet.layout import ScanFolder
from pfascannet.progress import fmt_duration


@dataclasses.dataclass
class SlideScanResult:
    """What happened to one slide.

    ``status``: ``done`` (scanned now, or its lesions/heatmap redone from the
    saved map), ``skipped`` (already done with these settings), ``failed``, or
    ``locked`` (another live process holds the slide; nothing was done).
    ``warnings``: lines worth a user's eye (e.g. no tissue found).
    """

    slide: str
    path: str
    status: str
    message: str = ""
    stats: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ScanSummary:
    """The results of a scan over a list of slides."""

    results: list[SlideScanResult]
    wall_s: float

    @property
    def failed(self) -> list[SlideScanResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        counts = collections.Counter(r.status for r in self.results)
        lines = [
            f"scanned {len(self.results)} slide(s) in {fmt_duration(self.wall_s)}: "
            f"{counts['done']} done, {counts['skipped']} already done, {counts['failed']} failed"
            + (f", {counts['locked']} left to another process" if counts["locked"] else "")
        ]
        lines += [f"  WARNING {w}" for r in self.results for w in r.warnings]
        lines += [f"  FAILED {r.slide}: {r.message}" for r in self.failed]
        return "\n".join(lines)


def write_scan_config(out_dir: str, runs: list, options: ScanSettings, paths: Sequence[str],
                      shard: Optional[tuple[int, int]] = None, **extra) -> None:
    """Writes ``scan_config.json`` (``scan_config.shard<i>of<N>.json`` for a shard): what a scan was asked for."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(
        ScanFolder(out_dir).scan_config_json(shard),
        {
            "runs": runs,
            "options": {
                f.name: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
                for f in dataclasses.fields(options)
                if f.name != "progress_stream"
                for v in [getattr(options, f.name)]
            },
            "shard": list(shard) if shard else None,
            "slides": list(paths),
            **extra,
        },
    )

