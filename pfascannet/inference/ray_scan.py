"""Cohort scans on Ray: one task per slide, on a laptop's cores or over a GPU cluster.

Zhao et al., MICCAI 2019, §2.2 and Table 1 give the per-slide scan
(``engine.scan_slide``); this module only schedules it.  Ray is the
scheduler (no queue of our own): the driver submits one task per slide and
each task runs the very ``engine.scan_slide`` a plain scan runs, into the
same ``out_dir``, so the outputs are the same files, written the same
atomic way:

- a slide already done with the same settings is skipped, and a slide whose
  worker died resumes from its ``partial/`` checkpoint (the map equals an
  uninterrupted scan's);
- a task whose worker process dies (killed, out of memory, node lost) is
  rerun by Ray up to ``max_retries`` times; a slide that fails for its own
  reasons (an unreadable file, no pixel size) is reported once, as a failed
  result, and never retried (``retry_exceptions=False``; the task also
  catches the error itself, as ``scan_slides`` does);
- each task asks for one GPU when the cluster has GPUs, else for
  ``cpus_per_task`` CPUs, so Ray runs as many slides at once as there are
  GPUs (or CPU slots);
- the driver prints one progress line for the cohort (slides done, failed,
  running, ETA) and writes ``slide_scores.csv`` at the end.

Without an address a local Ray is started on this machine (``num_workers``
CPU slots, no dashboard, on 127.0.0.1) and shut down at the end, so the same
command runs on a laptop.  With an address (``auto``, ``host:6379``,
``ray://host:10001``) the scan joins that cluster; every node needs the same
Python environment (``pip install -e '.[ray]'``) and ``out_dir``, the slides
and the model must be on storage every node sees (BUILD.md).

Ray is an optional dependency: :func:`import_ray` turns its absence into
one clear ``ScanError``.  The model is loaded in the workers (from the
``runs.RunSpec`` the driver resolved and checked without Keras) and kept
for the worker's next slide.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
import time
import traceback
from typing import Callable, Optional, Sequence

from pfascannet import camelyon
from pfascannet.errors import PfaError
from pfascannet.inference import engine, outputs, runs as runs_lib
from pfascannet.inference.scan_settings import ScanError, ScanSettings
from pfascannet.inference.scan_summary import ScanSummary, SlideScanResult, write_scan_config
from pfascannet.inference.slide_list import list_slides, shard_slides
from pfascannet.io_utils import remove_stale_temps
from pfascannet.progress import Progress, fmt_duration
from pfascannet.settings import at_least, check_fields, setting

RAY_MISSING = "--ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'ray>=2.9')"

LOCAL = "local"
"""The address that means: start a Ray of our own on this machine."""


def import_ray():
    """The ``ray`` module, or a ``ScanError`` that says how to install it."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise ScanError(RAY_MISSING) from None
    return ray


def _above_zero(value) -> Optional[str]:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else "must be > 0"


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """How the cohort is spread over Ray (validated on construction).

    Attributes:
      address: a running cluster (``auto``, ``host:6379``, ``ray://host:10001``);
        None or ``"local"`` starts a local Ray for this scan (or uses the one
        this process already started).
      num_workers: CPU slots of a local Ray (slides scanned at once on a
        machine without GPUs).  Each slide's TensorFlow uses several cores,
        so more workers than cores rarely helps; memory is about 1.5 GB per
        worker for the tiny model.
      cpus_per_task: CPUs each slide asks for when the cluster has no GPUs.
      max_retries: reruns of a slide whose worker process died.
      object_store_mb: a local Ray's object store (the tasks pass only
        paths and small results, so a small store is enough).
    """

    address: Optional[str] = setting(
        None, flag="ray",
        help="Scan one slide per Ray task: --ray alone starts a local Ray on this machine, --ray=ADDRESS joins "
             "a cluster (auto, host:6379, ray://host:10001). Needs the 'ray' extra.")
    num_workers: int = setting(2, flag=False, check=at_least(1), help="CPU slots of a local Ray.")
    cpus_per_task: float = setting(1, flag=False, check=_above_zero, help="CPUs each slide asks for (no GPUs).")
    max_retries: int = setting(3, flag=False, check=at_least(0), help="Reruns of a slide whose worker died.")
    object_store_mb: int = setting(128, flag=False, check=at_least(1), help="A local Ray's object store (MB).")

    def __post_init__(self):
        check_fields(self, ScanError)

    @property
    def local(self) -> bool:
        return self.address in (None, "", LOCAL)


# --------------------------------------------------------------------------- worker side

_LOADED: dict = {}  # one worker process keeps the model of its last task: its next slide reuses it


def _runs_for(specs) -> list:
    key = pickle.dumps(specs)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = [runs_lib.load_spec(s) for s in specs]
    return _LOADED[key]


def scan_slide_task(
    path: str,
    specs: Sequence,
    out_dir: str,
    options: ScanSettings,
    on_batch: Optional[Callable[[int], None]] = None,
) -> SlideScanResult:
    """What one Ray task runs: load (or reuse) the model, ``engine.scan_slide``, a result either way.

    A slide's own error becomes a ``failed`` result with the message a plain
    scan prints; only the death of the worker process is left to Ray.
    ``wait=True``: if another process holds the slide's lock (a plain scan
    into the same folder), wait for it rather than skip the slide.
    """
    slide = camelyon.slide_id(path)
    try:
        runs = _runs_for(specs)
        return engine.scan_slide(path, runs, out_dir, options, None, on_batch, wait=True)
    except Exception as exc:  # noqa: BLE001  (reported by the driver, like scan_slides does)
        if os.environ.get("PFASCANNET_DEBUG"):
            traceback.print_exc()
        message = str(exc) if isinstance(exc, PfaError) else f"{type(exc).__name__}: {exc}"
        return SlideScanResult(slide, path, "failed", message)


# --------------------------------------------------------------------------- driver side


class CohortProgress(Progress):
    """One line for the whole cohort: slides finished, failed, running, ETA (``pfascannet.progress``).

    A line is shown when a slide finishes (and at most every ``interval_s``
    seconds while none does; redrawn in place on a terminal).  The ETA is the
    slides left over the rate of slides scanned so far (skipped slides take
    no time and are left out of the rate).
    """

    def __init__(self, n_slides: int, slots: int, stream=None, enabled: bool = True, interval_s: float = 30.0):
        super().__init__(n_slides, unit="slide", stream=stream, enabled=enabled, interval_s=interval_s)
        self.slots = slots
        self.counts: collections.Counter = collections.Counter()

    def finished(self, result: SlideScanResult) -> None:
        self.counts[result.status] += 1
        if result.status == "failed":
            self.error(f"{result.slide}: {result.message}")
        self.done += 1
        self.show(force=True)

    def line(self) -> str:
        c = self.counts
        finished = sum(c.values())
        scanned = finished - c["skipped"]
        left = self.total - finished
        elapsed = self.elapsed_s()
        eta = left * elapsed / scanned if scanned else float("nan")
        running = min(left, self.slots)
        return (
            f"[ray] {finished}/{self.total} slides: {c['done']} done, {c['skipped']} already done, "
            f"{c['failed']} failed, {running} running | elapsed {fmt_duration(elapsed)} ETA {fmt_duration(eta)}"
        )


def _start(ray, ray_options: RaySettings) -> bool:
    """Connects to or starts Ray; True if this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        if ray_options.local:
            ray.init(
                num_cpus=ray_options.num_workers, num_gpus=None, include_dashboard=False,
                object_store_memory=ray_options.object_store_mb * 2**20, _node_ip_address="127.0.0.1", **quiet,
            )
        else:
            ray.init(address=ray_options.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray" if ray_options.local else f"the Ray cluster at {ray_options.address}"
        raise ScanError(f"could not start or reach {where}: {' '.join(str(exc).split())}") from None
    return True


def scan_slides_ray(
    slides: str | Sequence[str],
    specs: Sequence,
    out_dir: str,
    options: ScanSettings = ScanSettings(),
    shard: Optional[tuple[int, int]] = None,
    ray_options: RaySettings = RaySettings(),
    on_batch: Optional[Callable[[int], None]] = None,
) -> ScanSummary:
    """Scans a list of slides with one Ray task per slide; see the module docstring.

    Args:
      slides: a slide, a folder, a list file, or a sequence of them (``list_slides``).
      specs: the model runs as ``runs.resolve_runs`` settles them (loaded in
        the workers; an ensemble has several).
      out_dir: the scan's output folder, seen by every worker (ARCHITECTURE.md).
      options: the per-slide ScanSettings (its progress settings drive the
        cohort line; the tasks print none).
      shard: ``(i, N)``: only slides ``k`` with ``k mod N == i``.
      ray_options: where and how the tasks run.
      on_batch: test hook, see ``engine.scan_map`` (runs in the workers).

    Returns:
      An ``ScanSummary`` with one result per slide, in list order.
    """
    if not specs:
        raise ScanError("no model to scan with")
    ray = import_ray()
    paths = list_slides(slides)
    if shard is not None:
        paths = shard_slides(paths, shard)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)  # slide_scores.csv, scan_config: a killed run's temporaries (as scan_slides)
    started = _start(ray, ray_options)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            task_resources, slots = {"num_gpus": 1, "num_cpus": 1}, gpus
        else:
            task_resources = {"num_cpus": ray_options.cpus_per_task}
            slots = max(1, int(resources.get("CPU", 1) // ray_options.cpus_per_task))
        write_scan_config(
            out_dir, [dataclasses.asdict(s) if dataclasses.is_dataclass(s) else repr(s) for s in specs], options, paths,
            shard, ray=dict(dataclasses.asdict(ray_options), task_resources=task_resources,
                            cluster={k: resources[k] for k in ("CPU", "GPU") if k in resources}),
        )
        progress = CohortProgress(len(paths), slots, options.progress_stream, options.progress)
        progress.message(
            f"[ray] {len(paths)} slide(s), one task each asking for {task_resources} "
            f"({slots} at once; a dead worker's slide is retried up to {ray_options.max_retries} times)",
        )
        task = ray.remote(scan_slide_task).options(
            max_retries=ray_options.max_retries, retry_exceptions=False, **task_resources
        )
        # The tasks print nothing (no progress stream crosses processes).
        task_options = dataclasses.replace(options, progress=False, progress_stream=None)
        t0 = time.perf_counter()
        pending = {task.remote(p, list(specs), out_dir, task_options, on_batch): p for p in paths}
        results: dict[str, SlideScanResult] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(progress.interval_s, 1.0))
            for ref in ready:
                path = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up, or the task could not run
                    slide = camelyon.slide_id(path)
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    result = SlideScanResult(slide, path, "failed", f"{type(exc).__name__}: {first}")
                results[path] = result
                progress.finished(result)
            if not ready:
                progress.show()
    finally:
        if started:
            ray.shutdown()
    outputs.write_slide_scores(out_dir)
    summary = ScanSummary([results[p] for p in paths], time.perf_counter() - t0)
    progress.close()
    progress.message(summary.text(), always=True)
    return summary
