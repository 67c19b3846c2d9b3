"""The streaming scan: a slide's map computed down tall strips, every layer keeping its own halo.

An ROI scan (``engine.scan_map``, eq. (1)) computes each ``LR x LR`` ROI on
its own: at LR 2708 every ROI recomputes the 660-px border its neighbours
also compute, so only (2048/2708)^2 = 57 % of the trunk's work is new.  Here
the detector runs over a strip of the slide a few rows at a time instead:

- The detector is a chain of ``valid`` row operations (3x3 convolutions,
  2x2/2 max-pools, the PFE's 15-row convolutions, the dense pooling's crop and
  window; ``model.detector``).  Along the rows, op output ``j`` reads input
  rows ``[s j, s j + k)`` (kernel ``k``, stride ``s``).  ``_RowOp`` keeps the
  rows of its input that a later output still needs (its halo, ``k - s``
  rows) and computes every output its input rows allow, each time rows
  arrive.  Pushing the strip's input rows in chunks therefore gives every map
  row exactly once, and each from the very inputs an ROI would give it: no
  row of any layer is computed twice.
- Along the columns a strip is as wide as the tissue it covers (at most
  ``stream_width`` map pixels, so memory is bounded whatever the slide's
  size); neighbouring strips share one 660-px border, as neighbouring ROIs
  do, but at 256 map pixels (8,852 px) that is 8 % of a strip, not 43 %.
- By the central invariant (``geometry``, DESIGN.md §1) map pixel (u, v) is
  the patch classifier on the 692 patch at ``stride * (u, v) - origin``
  whatever window computes it, so a strip's map equals the ROI scan's: the
  same planned ROIs (``plan.RoiPlan``, edge ROIs included) are written, the
  rest stays 0 (tests/test_inference_stream.py: float32 within 1e-5,
  bfloat16 within ``precision.EQUIVALENCE_TOLERANCE``).

Work list: the planned ROIs' map pixels are cut into strips of whole ROI
columns (``plan_strips``); in each strip, the runs of map rows that hold
planned pixels are streamed top to bottom, each as wide as its planned
columns.  A gap shorter than a patch is streamed through (restarting would
recompute more).

Memory: the largest live tensors are a chunk's level-1 activations:
``(32 T + 2) x W x widths[0]`` values, three at once (a layer's input, its
halo-joined copy and its output), for ``T = stream_rows`` map rows and a
strip of ``W = 692 + 32 (stream_width - 1)`` px: at the paper's widths, T 16
and W 8,852 px about 0.58 GB each in bfloat16, 1.16 GB in float32, whatever
the slide's size (BENCHMARKS.md records the peak RSS).  The halos are a few
rows per layer.

Resume: the checkpoint (every ``checkpoint_every_s``, and when stopped)
holds the map, the ROIs done and the position in the work list with every
layer's halo, taken between two chunks; a rerun restores them and pushes the
very chunks an uninterrupted run would, so its map is the same.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from pfascannet import geometry
from pfascannet.inference.roi_readers import ReadAhead, ThreadReaders
from pfascannet.inference.xla import static_graphs
from pfascannet.inference.scan_settings import STREAM_WIDTH, ScanError, ScanSettings

WIDTH_QUANTUM = 16
"""Streamed strips are computed in widths of whole multiples of this many map pixels (``xla.static_graphs``)."""


# --------------------------------------------------------------------------- the work list


@dataclasses.dataclass(frozen=True)
class StripRun:
    """Map rows ``[u0, u1)`` x columns ``[v0, v1)`` streamed in one pass, and the plan's ROIs inside it."""

    u0: int
    u1: int
    v0: int
    v1: int
    rois: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """Map rows and columns written."""
        return self.u1 - self.u0, self.v1 - self.v0

    def computed_shape(self, rows_per_chunk: int) -> tuple[int, int]:
        """Map rows and columns computed: whole chunks of rows, columns in ``WIDTH_QUANTUM`` steps.

        The few extra rows and columns (read from the slide, white beyond it)
        are computed and dropped; in exchange each layer meets only a few
        input shapes per slide, each compiled once (``xla.static_graphs``: one graph per shape).
        """
        rows, cols = self.shape
        return rows_per_chunk * -(-rows // rows_per_chunk), WIDTH_QUANTUM * -(-cols // WIDTH_QUANTUM)

    def input_px(self, alpha: int, rows_per_chunk: int) -> int:
        """Model pixels pushed through the detector for this run (eq. (1) on each side)."""
        rows, cols = self.computed_shape(rows_per_chunk)
        return geometry.roi_px(rows, alpha) * geometry.roi_px(cols, alpha)


def plan_strips(plan, width_px: int = STREAM_WIDTH) -> list[StripRun]:
    """The streaming work list of ``plan``: strips of whole ROI columns, then runs of rows in each.

    Args:
      plan: the slide's ``RoiPlan`` (what the ROI scan would compute).
      width_px: widest strip in map pixels; rounded down to whole ROI columns
        (at least one).

    Returns:
      Runs in order (strips left to right, runs top to bottom); every planned
      ROI lies in exactly one run, and no map pixel is in two runs.
    """
    if isinstance(width_px, bool) or not isinstance(width_px, int) or width_px < 1:
        raise ScanError(f"stream width must be a whole number of map pixels >= 1, got {width_px!r}")
    if len(plan) == 0:
        return []
    need = plan.planned_mask()
    lm = plan.tile_px
    stride = plan.geometry.stride_px
    # A gap shorter than a patch's rows of map costs less to stream through than to restart after.
    gap = -(-(geometry.PATCH_PX - stride) // stride)
    cols = np.flatnonzero(need.any(axis=0))
    j_lo, j_hi = int(cols[0]) // lm, int(cols[-1]) // lm + 1
    per_strip = max(1, width_px // lm)
    n_strips = -(-(j_hi - j_lo) // per_strip)
    bounds = np.linspace(j_lo, j_hi, n_strips + 1).round().astype(int)  # strips of (nearly) equal ROI columns
    corners = [plan.roi_window(k)[::2] for k in range(len(plan))]  # (first map row, first map column)
    runs: list[StripRun] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        c_lo, c_hi = int(a) * lm, min(int(b) * lm, need.shape[1])
        sub = need[:, c_lo:c_hi]
        rows = np.flatnonzero(sub.any(axis=1))
        if rows.size == 0:
            continue
        starts = [int(rows[0])]
        ends = []
        for prev, r in zip(rows[:-1], rows[1:]):
            if r - prev - 1 >= gap:
                ends.append(int(prev) + 1)
                starts.append(int(r))
        ends.append(int(rows[-1]) + 1)
        for u0, u1 in zip(starts, ends):
            used = np.flatnonzero(sub[u0:u1].any(axis=0))
            v0, v1 = c_lo + int(used[0]), c_lo + int(used[-1]) + 1
            inside = tuple(k for k, (r0, c0) in enumerate(corners) if u0 <= r0 < u1 and c_lo <= c0 < c_hi)
            runs.append(StripRun(u0, u1, v0, v1, inside))
    return runs


def chunk_bounds(n_rows: int, alpha: int, rows_per_chunk: int) -> list[int]:
    """Input-row boundaries of a run of ``n_rows`` map rows pushed ``rows_per_chunk`` map rows' worth at a time.

    Every chunk has ``stride * rows_per_chunk`` input rows (512 at alpha 16 and
    16 rows), the last one ``(Lp - stride) mod`` that: the run's computed rows
    are whole chunks of map rows (``StripRun.computed_shape``), so every
    run, whatever its length, shows each layer the same few input shapes,
    and no chunk holds more than one chunk's rows (the memory bound).
    """
    n = rows_per_chunk * -(-n_rows // rows_per_chunk)
    total = geometry.roi_px(n, alpha)
    return list(range(0, total, geometry.output_stride_px(alpha) * rows_per_chunk)) + [total]


# --------------------------------------------------------------------------- the detector, row by row


class _RowOp:
    """A ``valid`` operation along the rows (kernel ``k``, stride ``s``) fed rows a chunk at a time.

    Output row ``j`` (counted from the strip's top) reads input rows
    ``[s j, s j + k)``; ``push`` returns every output row the rows so far
    allow (None if none) and keeps the input rows a later output needs.
    """

    def __init__(self, name: str, fn: Callable, k: int, s: int = 1):
        self.name, self.fn, self.k, self.s = name, fn, int(k), int(s)
        self.reset()

    def reset(self) -> None:
        self.buf = None  # input rows [start, start + rows) kept from earlier pushes
        self.start = 0
        self.next_out = 0

    def push(self, x):
        from keras import ops  # noqa: PLC0415

        buf = x if self.buf is None else ops.concatenate([self.buf, x], axis=1)
        end = self.start + int(buf.shape[1])
        first = self.s * self.next_out
        n = (end - first - self.k) // self.s + 1 if end - first >= self.k else 0
        if n <= 0:
            self.buf = buf
            return None
        lo = first - self.start
        out = self.fn(buf[:, lo:lo + self.s * (n - 1) + self.k])
        self.next_out += n
        keep = self.s * self.next_out  # the next output's first input row
        self.buf = buf[:, keep - self.start:] if keep < end else None
        self.start = keep
        return out


def _chain(ops_: list[_RowOp], x):
    for op in ops_:
        if x is None:
            return None
        x = op.push(x)
    return x


class DetectorStream:
    """The detector's layers (``model.detector``) run over one strip, chunk of rows by chunk of rows.

    Args:
      model: a ``PfaScanNetDetector`` (any input side; its layers are called
        by name, at its own precision) at dense coefficient ``alpha``.

    ``push(rgb)`` takes the next input rows ``[rows, W, 3]`` (RGB 0..255) of
    the strip and returns the tumour probability of the map rows they
    complete, ``[n, Lw]`` float32 (n may be 0); ``reset()`` starts a new strip.
    """

    def __init__(self, model, alpha: int):
        geometry.check_alpha(alpha)
        self.alpha = int(alpha)
        get = model.get_layer

        def layers(*names):
            chosen = [get(n) for n in names]

            def fn(x):
                for layer in chosen:
                    x = layer(x)
                return x

            return static_graphs(fn)

        def conv_ops(block: int) -> list[_RowOp]:
            out = []
            c = 1
            while True:
                try:
                    get(f"block{block}_conv{c}")
                except ValueError:
                    return out
                out.append(_RowOp(f"block{block}_conv{c}", layers(f"block{block}_conv{c}"), 3))
                c += 1

        def pool_op(block: int) -> _RowOp:
            return _RowOp(f"block{block}_pool", layers(f"block{block}_pool"), 2, 2)

        k = geometry.GLOBAL_CONV_K

        def head_ops(level: int) -> list[_RowOp]:
            a1, a2 = get(f"pfe{level}_a_{k}x1"), get(f"pfe{level}_a_1x{k}")
            b1, b2 = get(f"pfe{level}_b_1x{k}"), get(f"pfe{level}_b_{k}x1")
            add = get(f"pfe{level}_sum")

            def pfe(x):
                return add([a2(a1(x)), b2(b1(x))])

            pool = get(f"dense_pool{level}")
            # The layer crops ``margin`` rows on each side itself, so it reads 2 margin + window rows.
            return [
                _RowOp(f"pfe{level}", static_graphs(pfe), k),
                _RowOp(pool.name, static_graphs(pool), 2 * pool.margin + pool.window, pool.stride),
            ]

        first = [_RowOp("normalise", layers("normalise"), 1)] + conv_ops(1)
        first += [pool_op(1)] + conv_ops(2) + [pool_op(2)] + conv_ops(3)
        self._trunk = {3: first, 4: [pool_op(3)] + conv_ops(4), 5: [pool_op(4)] + conv_ops(5)}
        self._heads = {level: head_ops(level) for level in geometry.HEAD_LEVELS}
        total, classify, probs = get("pyramid_sum"), get("classifier_conv"), get("probabilities")
        self._finish = static_graphs(lambda ms: probs(classify(total(ms))))
        self._pending: dict[int, list] = {}
        self.reset()

    @property
    def _ops(self) -> list[_RowOp]:
        out = []
        for level in geometry.HEAD_LEVELS:
            out += self._trunk[level] + self._heads[level]
        return out

    def reset(self) -> None:
        for op in self._ops:
            op.reset()
        self._pending = {level: [] for level in geometry.HEAD_LEVELS}
        self.emitted = 0

    def push(self, rgb: np.ndarray) -> np.ndarray:
        from keras import ops  # noqa: PLC0415

        x = ops.convert_to_tensor(np.asarray(rgb, np.float32)[None])
        for level in geometry.HEAD_LEVELS:
            x = _chain(self._trunk[level], x)  # X3, then X4 from X3, X5 from X4
            m = _chain(self._heads[level], x)
            if m is not None:
                self._pending[level].append(m)
        ready = min(sum(int(t.shape[1]) for t in self._pending[level]) for level in geometry.HEAD_LEVELS)
        if ready == 0:
            return np.zeros((0, 0), np.float32)
        parts = []
        for level in geometry.HEAD_LEVELS:
            rows = self._pending[level]
            whole = rows[0] if len(rows) == 1 else ops.concatenate(rows, axis=1)
            parts.append(whole[:, :ready])
            self._pending[level] = [whole[:, ready:]] if int(whole.shape[1]) > ready else []
        probs = ops.convert_to_numpy(self._finish(parts))
        self.emitted += ready
        return np.asarray(probs[0, :, :, 1], np.float32)

    # A checkpoint's view of the halos: float32 arrays (bfloat16 and float16 convert exactly both ways).

    def state(self) -> dict:
        from keras import ops  # noqa: PLC0415

        out = {"emitted": np.array(self.emitted)}
        for i, op in enumerate(self._ops):
            out[f"op{i}_pos"] = np.array([op.start, op.next_out, -1 if op.buf is None else 1])
            if op.buf is not None:
                out[f"op{i}_buf"] = np.asarray(ops.convert_to_numpy(ops.cast(op.buf, "float32")))
                out[f"op{i}_dtype"] = np.array(_dtype_name(op.buf))
        for level in geometry.HEAD_LEVELS:
            for n, t in enumerate(self._pending[level]):
                out[f"pending{level}_{n}"] = np.asarray(ops.convert_to_numpy(ops.cast(t, "float32")))
                out[f"pending{level}_{n}_dtype"] = np.array(_dtype_name(t))
        return out

    def load_state(self, state) -> None:
        from keras import ops  # noqa: PLC0415

        self.reset()
        self.emitted = int(state["emitted"])
        for i, op in enumerate(self._ops):
            start, next_out, has = (int(v) for v in state[f"op{i}_pos"])
            op.start, op.next_out = start, next_out
            if has > 0:
                op.buf = ops.cast(ops.convert_to_tensor(state[f"op{i}_buf"]), str(state[f"op{i}_dtype"]))
        for level in geometry.HEAD_LEVELS:
            n = 0
            while f"pending{level}_{n}" in state:
                t = ops.convert_to_tensor(state[f"pending{level}_{n}"])
                self._pending[level].append(ops.cast(t, str(state[f"pending{level}_{n}_dtype"])))
                n += 1


def _dtype_name(t) -> str:
    from keras import backend  # noqa: PLC0415

    return backend.standardize_dtype(t.dtype)


# --------------------------------------------------------------------------- the scan


def stream_settings(options: ScanSettings) -> dict:
    """What a streamed map depends on beyond an ROI scan's (part of its fingerprint)."""
    return {"rows": options.stream_rows, "width": options.stream_width}


def detector_stream(run) -> DetectorStream:
    """The run's ``DetectorStream`` (built once per run; needs the Keras model, not a SavedModel)."""
    cached = run.__dict__.get("_stream")
    if cached is None:
        model = getattr(run.detector, "model", None)
        if model is None or not hasattr(model, "get_layer"):
            raise ScanError(
                f"{run.name}: --stream runs the detector's layers, which a SavedModel does not expose; "
                "scan the export's .keras model (the export folder loads it when --stream is on)"
            )
        cached = run.__dict__["_stream"] = DetectorStream(model, run.grid.alpha)
    return cached


def scan_map_streaming(slide_path, run, plan, options: ScanSettings, checkpoint_path=None, fingerprint=None,
                       progress=None, on_batch=None):
    """``engine.scan_map`` computed by streaming (module docstring): the same map, resumable.

    ``on_batch`` is called with the number of ROIs done after each chunk.

    Returns:
      ``(map, stats)``: float32 ``plan.map_shape``, 0 outside planned ROIs.
    """
    from pfascannet.inference import engine  # noqa: PLC0415  (engine dispatches here)

    if run.mode != "dense":
        raise ScanError(f"{run.name}: --stream computes the dense map; --mode={run.mode} scans patch by patch")
    if plan.geometry != run.grid:
        raise ScanError(f"plan geometry {plan.geometry} does not match the model grid {run.grid}")
    stream = detector_stream(run)
    work = plan_strips(plan, options.stream_width)
    stride = plan.geometry.stride_px
    origin = geometry.map_origin_px(plan.geometry.alpha)
    bounds = [chunk_bounds(w.u1 - w.u0, plan.geometry.alpha, options.stream_rows) for w in work]
    fingerprint = dict(fingerprint or {}, plan=plan.describe(), run=run.describe(), stream=stream_settings(options))
    fid = engine.fingerprint_id(fingerprint)
    stats = engine.ScanStats(n_rois=len(plan))
    need = plan.planned_mask()
    prob_map, done = np.zeros(plan.map_shape, np.float32), np.zeros(len(plan), bool)
    position, state = (0, 0), None
    warn = (progress or engine.quiet_progress(options)).warning
    resumed = engine.load_checkpoint(checkpoint_path, fid, plan.map_shape, len(plan), warn) if checkpoint_path else None
    if resumed is not None:
        prob_map, done, rest = resumed
        position = tuple(int(v) for v in rest.get("position", (0, 0)))
        state = {k[2:]: v for k, v in rest.items() if k.startswith("s_")} or None
    stats.n_resumed = int(done.sum())
    if progress is not None:
        progress.skip(stats.n_resumed)
    items = [(ri, ci) for ri in range(len(work)) for ci in range(len(bounds[ri]) - 1) if (ri, ci) >= position]
    if state is not None and position[1] > 0:
        stream.load_state(state)
    else:
        stream.reset()
    readers = ThreadReaders(slide_path, options.mpp)

    def read(ri: int, ci: int) -> np.ndarray:
        w = work[ri]
        y0, y1 = bounds[ri][ci], bounds[ri][ci + 1]
        width = geometry.roi_px(w.computed_shape(options.stream_rows)[1], plan.geometry.alpha)
        return plan.read.read(readers.get(), (w.v0 * stride - origin, w.u0 * stride - origin + y0), (width, y1 - y0))

    t_start = time.perf_counter()
    last_ckpt = time.monotonic()
    consistent, dirty = True, False
    ahead = ReadAhead(items, lambda pool, item: pool.submit(read, *item), options.workers,
                      options.prefetch_batches + 1, "strip-reader")
    here = position

    def save(position_, state_) -> None:
        arrays = {f"s_{k}": v for k, v in (state_ or {}).items()}
        engine.save_checkpoint(checkpoint_path, fid, prob_map, done, position=np.array(position_, np.int64), **arrays)

    def snapshot():
        if here[1] == 0:  # between two runs: nothing of the stream to keep
            return here, None
        return here, stream.state()

    try:
        while ahead:
            (ri, ci), future = ahead.pop()
            w = work[ri]
            t0 = time.perf_counter()
            rgb = future.result()
            t1 = time.perf_counter()
            ahead.refill()
            consistent = False
            if ci == 0:
                stream.reset()
            before = stream.emitted
            probs = stream.push(rgb)
            t2 = time.perf_counter()
            stats.wait_s += t1 - t0
            stats.model_s += t2 - t1
            r0, r1 = w.u0 + before, min(w.u0 + stream.emitted, w.u1)
            if r1 > r0:
                rows, cols = slice(r0, r1), slice(w.v0, w.v1)
                fresh = probs[: r1 - r0, : w.v1 - w.v0]
                prob_map[rows, cols] = np.where(need[rows, cols], fresh, prob_map[rows, cols])
            last = ci + 2 == len(bounds[ri])
            if last and stream.emitted != w.computed_shape(options.stream_rows)[0]:
                raise ScanError(f"streaming run {ri} gave {stream.emitted} map rows, "
                                f"expected {w.computed_shape(options.stream_rows)[0]}")
            newly = [k for k in w.rois if not done[k] and plan.roi_window(k)[1] <= w.u0 + stream.emitted]
            done[newly] = True
            here = (ri + 1, 0) if last else (ri, ci + 1)
            consistent, dirty = True, True
            if checkpoint_path and time.monotonic() - last_ckpt >= options.checkpoint_every_s:
                save(*snapshot())
                last_ckpt, dirty = time.monotonic(), False
            if progress is not None and newly:
                progress.advance(len(newly))
            if on_batch is not None:
                on_batch(int(done.sum()))
    except BaseException:
        # Stopped between two chunks: keep everything up to here.  Stopped inside a chunk (the
        # layers' halos half updated): the last periodic checkpoint stands.
        if checkpoint_path and dirty and consistent:
            save(*snapshot())
        raise
    finally:
        ahead.close()
        readers.close()
    if checkpoint_path and dirty:
        save(here, None)
    stats.wall_s = time.perf_counter() - t_start
    stats.input_px = sum(w.input_px(plan.geometry.alpha, options.stream_rows) for w in work)
    return prob_map, stats
