"""Soak: scanning processes and a ``--ray`` run on one output folder, SIGKILLed at random and restarted (issue 23).

The scan soak, in rounds until ``--duration_s`` of chaos have passed:

- ``--procs`` ``pfascannet scan`` processes (the real command line) and, with
  ``--ray``, one ``pfascannet scan --ray`` run (a local Ray) scan one folder of
  ``--slides`` small synthetic slides into one ``--out`` folder;
- every ``--kill_min_s``..``--kill_max_s`` seconds one plain scanning process,
  drawn at random among those past their start-up (``--min_age_s``), is killed
  with SIGKILL and started again, up to ``--kills_per_round`` times a round;
- each round begins by swapping the model behind ``W/model`` (export A ->
  export B, file by file, as a user would copy one over the other); at a random
  moment of the round, while the processes run, the model is swapped back
  (B -> A) and one slide file is replaced by other pixels (a fixed
  modification time per version, so its fingerprint is reproducible);
- a process that started before the last swap or replacement is started again
  when it exits (it scanned with what it loaded); a round ends when no
  process is left; the kills stop once the duration is over.

After every round the output folder must equal one clean, uninterrupted scan
of the same slides with the same model (``W/clean_<version>``, made once per
slide version): every map (``.npy``, ``_map.tif``, ``_scanned.png``), its
sidecar JSON (all but the wall times), every lesion CSV and contour, and
``slide_scores.csv`` byte for byte; no temporary left anywhere, no
checkpoint left in ``partial/``.  Every process (Ray workers included) logs
each map it writes (slide, fingerprint, pid) through a ``sitecustomize`` hook
in ``W/hook``; a slide written twice in a row with the same fingerprint is a
slide scanned twice after its lock was taken, and fails the soak.

The training soak (``--train_steps`` > 0): a ``pfascannet train --config tiny``
run of ``--train_steps`` steps, SIGKILLed ``--train_kills`` times at random
moments and restarted each time, must end with a ``final.weights.h5`` equal
byte for byte to an unkilled run's.

Prints one JSON object (and writes ``--out_json``): rounds, kills survived,
files and bytes compared, scans logged, training kills and bytes compared.
Not run in CI (``tests/test_bench_soak.py`` runs a one-round version).

Example (BENCHMARKS.md)::

    python experiments/bench_soak.py --workdir /tmp/soak --duration_s 600
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import flags

from pfascannet.cliutil import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Scratch folder (kept: slides, models and clean scans are reused).")
flags.DEFINE_float("duration_s", 600.0, "Seconds of random kills (rounds go on until this is over).")
flags.DEFINE_integer("slides", 42, "Number of small slides.")
flags.DEFINE_string("slide_px", "1024x768", "Slide width x height (level-0 px).")
flags.DEFINE_integer("procs", 3, "Plain scanning processes.")
flags.DEFINE_bool("ray", True, "Also run one `pfascannet scan --ray` (a local Ray) in every round.")
flags.DEFINE_float("kill_min_s", 4.0, "Least seconds between two kills.")
flags.DEFINE_float("kill_max_s", 15.0, "Most seconds between two kills.")
flags.DEFINE_integer("kills_per_round", 6, "Most kills in one round (then it settles and is compared).")
flags.DEFINE_float("min_age_s", 8.0, "Only a process running this long is killed (not one still importing).")
flags.DEFINE_integer("max_rounds", 0, "Stop after this many rounds (0: as many as the duration allows).")
flags.DEFINE_integer("seed", 0, "Seed of the kill times, victims and swap moments.")
flags.DEFINE_bool("scan_soak", True, "Run the scan soak (--noscan_soak: only the training soak).")
flags.DEFINE_integer("train_steps", 300, "Steps of the training soak (0: no training soak).")
flags.DEFINE_integer("train_kills", 5, "SIGKILLs of the training run.")
flags.DEFINE_integer("train_batch", 2, "Batch size of the training soak.")
flags.DEFINE_string("out_json", None, "Also write the result here.")

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLACED = 0  # index of the slide replaced every round
SCAN_FLAGS = ["--tissue=all", "--batch=1", "--checkpoint_s=0", "--noheatmap", "--noprogress"]

# Logs every map a process writes: "<time> <pid> <slide> <fingerprint id>".
_HOOK = '''
import importlib.abc, importlib.util, os, sys, time

_LOG = os.environ.get("PFASCANNET_SOAK_LOG")


def _patch(module):
    real = module.write_map

    def write_map(out_dir, slide, prob_map, meta, scanned):
        result = real(out_dir, slide, prob_map, meta, scanned)
        import hashlib, json
        fp = hashlib.sha256(json.dumps(meta.get("fingerprint"), sort_keys=True).encode()).hexdigest()[:16]
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.write(fd, f"{time.time():.6f} {os.getpid()} {slide} {fp}\\n".encode())
        os.close(fd)
        return result

    module.write_map = write_map


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "pfascannet.inference.outputs":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if _LOG:
    sys.meta_path.insert(0, _Finder())
'''


# --------------------------------------------------------------------------- set-up


def _write_slide(path: str, wh: tuple[int, int], seed: int, mtime_s: int) -> None:
    """Smoothed-noise tissue with some glass, lossless, mpp 0.243, at a fixed modification time."""
    from scipy import ndimage  # noqa: PLC0415

    from pfascannet.io_utils import atomic_path  # noqa: PLC0415
    from pfascannet.slide.tiff_writer import write_pyramid_tiff  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    w, h = wh
    noise = ndimage.uniform_filter(rng.integers(0, 256, (h, w, 3)).astype(np.float32), size=(5, 5, 1))
    image = np.clip(noise * 1.6 - 60, 0, 255).astype(np.uint8)
    image[: h // 4, : w // 3] = 255

    def tiles(x, y, tw, th):
        out = np.full((th, tw, 3), 255, np.uint8)
        part = image[y : y + th, x : x + tw]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    with atomic_path(path, suffix=".tif") as tmp:
        write_pyramid_tiff(tmp, (w, h), tiles, tiff_tile_px=256, compression="deflate", num_levels=2, workers=1)
        os.utime(tmp, ns=(mtime_s * 10**9, mtime_s * 10**9))


def slide_path(workdir: str, k: int) -> str:
    return os.path.join(workdir, "slides", f"patient_{k // 5:03d}_node_{k % 5}.tif")


def make_slides(workdir: str, n: int, wh: tuple[int, int]) -> None:
    for k in range(n):
        if not os.path.exists(slide_path(workdir, k)):
            _write_slide(slide_path(workdir, k), wh, seed=k, mtime_s=1_700_000_000 + k)


def set_slide_version(workdir: str, wh: tuple[int, int], version: int) -> None:
    """Slide ``REPLACED`` with the pixels of ``version`` (0 or 1), written atomically over the old file."""
    _write_slide(slide_path(workdir, REPLACED), wh, seed=REPLACED + 1000 * version,
                 mtime_s=1_700_000_000 + REPLACED + 10**6 * version)


def make_models(workdir: str) -> None:
    """Two exports of the tiny detector (random weights, seeds 1 and 2): ``W/models/A`` and ``W/models/B``."""
    from pfascannet.inference.export import export_detector  # noqa: PLC0415
    from pfascannet.model.config import ModelConfig  # noqa: PLC0415
    from pfascannet.model.detector import build_detector  # noqa: PLC0415

    for seed, name in ((1, "A"), (2, "B")):
        out = os.path.join(workdir, "models", name)
        if os.path.exists(os.path.join(out, "export.json")):
            continue
        model = build_detector(ModelConfig.tiny(), alpha=16)
        rng = np.random.default_rng(seed)
        # Small random weights keep the probabilities away from 0 and 1 (maps with structure).
        model.set_weights([(rng.standard_normal(w.shape) * 0.05).astype(np.float32) for w in model.get_weights()])
        export_detector(model, ModelConfig.tiny(), out, alpha=16, roi_px=916, formats=("keras",))


def swap_model(workdir: str, name: str) -> None:
    """Copies export ``name`` over ``W/model`` file by file (each file replaced atomically, new mtimes)."""
    from pfascannet.io_utils import atomic_path  # noqa: PLC0415

    src, dst = os.path.join(workdir, "models", name), os.path.join(workdir, "model")
    os.makedirs(dst, exist_ok=True)
    for f in sorted(os.listdir(src), key=lambda n: n == "export.json"):  # export.json last, as the export writes it
        with atomic_path(os.path.join(dst, f), suffix=os.path.splitext(f)[1]) as tmp:
            shutil.copyfile(os.path.join(src, f), tmp)


# --------------------------------------------------------------------------- processes


class Proc:
    def __init__(self, cmd: list[str], log: str, env: dict, kind: str):
        self.cmd, self.kind, self.started = cmd, kind, time.time()
        self.log = open(log, "ab")
        self.popen = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                      start_new_session=True)

    def poll(self):
        rc = self.popen.poll()
        if rc is not None:
            self.log.close()
        return rc

    def kill(self) -> None:
        with_ignore = (ProcessLookupError, PermissionError)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the process and any child it started
        except with_ignore:
            pass
        self.popen.wait()
        self.log.close()


def scan_command(workdir: str, out: str, ray: bool = False) -> list[str]:
    cmd = [PYTHON, "-m", "pfascannet.cli", "scan", f"--model={os.path.join(workdir, 'model')}",
           f"--slides={os.path.join(workdir, 'slides')}", f"--out={out}", *SCAN_FLAGS]
    return cmd + (["--ray"] if ray else [])


def _env(workdir: str) -> dict:
    hook = os.path.join(workdir, "hook")
    os.makedirs(hook, exist_ok=True)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(_HOOK)
    path = os.pathsep.join(p for p in (hook, REPO, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, PFASCANNET_SOAK_LOG=os.path.join(workdir, "writes.log"),
                TF_CPP_MIN_LOG_LEVEL="3")


# --------------------------------------------------------------------------- checks


PER_SLIDE = ("maps", "lesions", "contours")


def compare_outputs(clean: str, out: str) -> tuple[int, int]:
    """(files, bytes) compared; raises AssertionError naming the first difference."""
    files = nbytes = 0
    for sub in PER_SLIDE:
        names = sorted(os.listdir(os.path.join(clean, sub)))
        got = sorted(os.listdir(os.path.join(out, sub)))
        assert got == names, f"{sub}/: {sorted(set(got) ^ set(names))[:5]} differ"
        for name in names:
            a, b = os.path.join(clean, sub, name), os.path.join(out, sub, name)
            if name.endswith(".json"):
                ja, jb = json.load(open(a)), json.load(open(b))
                ja.pop("timing"), jb.pop("timing")  # wall times; everything else must match
                assert ja == jb, f"{sub}/{name} differs"
            else:
                assert filecmp.cmp(a, b, shallow=False), f"{sub}/{name} differs"
            files += 1
            nbytes += os.path.getsize(b)
    a, b = os.path.join(clean, "slide_scores.csv"), os.path.join(out, "slide_scores.csv")
    assert filecmp.cmp(a, b, shallow=False), "slide_scores.csv differs"
    return files + 1, nbytes + os.path.getsize(b)


def leftovers(out: str) -> list[str]:
    """Temporaries and checkpoints left anywhere under ``out`` (lock files are not leftovers)."""
    from pfascannet.io_utils import is_temp_name  # noqa: PLC0415

    left = []
    for root, dirs, names in os.walk(out):
        for n in dirs + names:
            if is_temp_name(n) or n.startswith("."):
                left.append(os.path.join(root, n))
    left += [os.path.join(out, "partial", n) for n in os.listdir(os.path.join(out, "partial"))]
    return left


def double_scans(log: str, since: float) -> tuple[int, list[str]]:
    """(maps written, slides written twice in a row with one fingerprint) in the writes log from ``since`` on."""
    last: dict = {}
    written, doubles = 0, []
    if not os.path.exists(log):
        return 0, []
    for line in sorted(open(log).read().split("\n")):
        if not line.strip():
            continue
        t, pid, slide, fp = line.split()
        if float(t) < since:
            continue
        written += 1
        if last.get(slide) == fp:
            doubles.append(f"{slide} by pid {pid} at {t}")
        last[slide] = fp
    return written, doubles


# --------------------------------------------------------------------------- the scan soak


def clean_scan(workdir: str, version: int, env: dict) -> str:
    """One uninterrupted scan with model A and slide version ``version`` (made once)."""
    out = os.path.join(workdir, f"clean_{version}")
    if not os.path.exists(os.path.join(out, "slide_scores.csv")):
        shutil.rmtree(out, ignore_errors=True)
        clean_env = {k: v for k, v in env.items() if k != "PFASCANNET_SOAK_LOG"}
        proc = subprocess.run(scan_command(workdir, out), cwd=REPO, env=clean_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the clean scan failed: {proc.stderr[-2000:]}")
    return out


def scan_soak(workdir: str, wh: tuple[int, int], log=print) -> dict:
    rng = random.Random(FLAGS.seed)
    env = _env(workdir)
    make_slides(workdir, FLAGS.slides, wh)
    make_models(workdir)
    version = 0
    set_slide_version(workdir, wh, version)
    swap_model(workdir, "A")
    out = os.path.join(workdir, "S")
    shutil.rmtree(out, ignore_errors=True)
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    writes = env["PFASCANNET_SOAK_LOG"]
    if os.path.exists(writes):
        os.remove(writes)
    for v in (1, 0):  # the replaced slide swings between two versions
        set_slide_version(workdir, wh, v)
        clean_scan(workdir, v, env)
    result = {"rounds": 0, "kills": 0, "restarts": 0, "files_compared": 0, "bytes_compared": 0, "maps_written": 0,
              "double_scans": [], "exit_statuses": {}, "ray_runs": 0}
    t_start = time.time()
    started = failures = 0
    doubles_before = 0

    def start(kind: str) -> Proc:
        nonlocal started
        started += 1
        return Proc(scan_command(workdir, out, ray=kind == "ray"), os.path.join(logs, f"{started:04d}_{kind}.log"),
                    env, kind)

    while FLAGS.max_rounds == 0 or result["rounds"] < FLAGS.max_rounds:
        t_round = time.time()
        swap_model(workdir, "B")
        last_change = time.time()
        procs = [start("scan") for _ in range(FLAGS.procs)] + ([start("ray")] if FLAGS.ray else [])
        result["ray_runs"] += int(FLAGS.ray)
        swap_back_at = t_round + rng.uniform(8.0, 30.0)
        swapped_back = False
        round_kills = 0
        next_kill = time.time() + rng.uniform(FLAGS.kill_min_s, FLAGS.kill_max_s)
        while procs:
            time.sleep(0.1)
            now = time.time()
            if not swapped_back and now >= swap_back_at:
                # Mid-run: the model goes back to A and one slide gets other pixels.
                version = 1 - version
                set_slide_version(workdir, wh, version)
                swap_model(workdir, "A")
                last_change, swapped_back = time.time(), True
                log(f"round {result['rounds']}: model swapped back to A and slide {REPLACED} replaced (v{version}) "
                    f"at {now - t_round:.1f} s")
            for p in list(procs):
                rc = p.poll()
                if rc is None:
                    continue
                procs.remove(p)
                result["exit_statuses"][str(rc)] = result["exit_statuses"].get(str(rc), 0) + 1
                if rc not in (0, 1):
                    failures += 1
                    if failures > 20:
                        raise RuntimeError(f"scans keep failing (exit {rc}); see {p.log.name}")
                if p.started < last_change or not swapped_back or rc != 0:
                    procs.append(start(p.kind))  # it scanned with what it loaded: again, with what is there now
                    result["restarts"] += 1
            chaos = now - t_start < FLAGS.duration_s and round_kills < FLAGS.kills_per_round
            plain = [p for p in procs if p.kind == "scan" and now - p.started >= FLAGS.min_age_s]
            if chaos and now >= next_kill and plain:
                victim = rng.choice(plain)
                victim.kill()
                procs.remove(victim)
                procs.append(start("scan"))
                result["kills"] += 1
                round_kills += 1
                next_kill = now + rng.uniform(FLAGS.kill_min_s, FLAGS.kill_max_s)
        files, nbytes = compare_outputs(clean_scan(workdir, version, env), out)
        left = leftovers(out)
        assert not left, f"left behind: {left[:5]}"
        written, doubles = double_scans(writes, 0.0)  # the whole log: a round starts where the last ended
        result["rounds"] += 1
        result["files_compared"] += files
        result["bytes_compared"] += nbytes
        log(f"round {result['rounds']} ({time.time() - t_round:.0f} s): {result['kills']} kills so far; "
            f"{files} files, {nbytes} bytes equal to the clean scan; {written - result['maps_written']} maps "
            f"written, {len(doubles) - doubles_before} written twice")
        result["maps_written"], result["double_scans"], doubles_before = written, doubles, len(doubles)
        assert not doubles, f"slides scanned twice after their lock was taken: {doubles[:5]}"
        if time.time() - t_start >= FLAGS.duration_s:
            break
    result["wall_s"] = round(time.time() - t_start, 1)
    return result


# --------------------------------------------------------------------------- the training soak


def train_command(data: str, workdir: str, steps: int, batch: int) -> list[str]:
    return [PYTHON, "-m", "pfascannet.cli", "train", "--config=tiny", f"--data={data}", f"--workdir={workdir}",
            f"--steps={steps}", f"--batch_size={batch}", "--learning_rate=0.002", "--checkpoint_every=10",
            "--log_every=50", "--random_per_class=4", "--boundary=2", "--itc=1", "--num_parallel_calls=2"]


def train_soak(workdir: str, log=print) -> dict:
    rng = random.Random(FLAGS.seed + 1)
    env = {k: v for k, v in _env(workdir).items() if k != "PFASCANNET_SOAK_LOG"}
    data = os.path.join(workdir, "cohort")
    if not os.path.exists(os.path.join(data, "slides.csv")):
        from pfascannet.synthetic.cohort import make_cohort  # noqa: PLC0415

        make_cohort(data, seed=0, patients=2, nodes_per_patient=3, slide_size=4096, test_fraction=0.5,
                    node_labels=[["negative", "macro", "itc"], ["micro", "negative", "itc"]])
    steps, batch = FLAGS.train_steps, FLAGS.train_batch
    plain, killed = os.path.join(workdir, "train_plain"), os.path.join(workdir, "train_killed")
    shutil.rmtree(killed, ignore_errors=True)
    t0 = time.time()
    if not os.path.exists(os.path.join(plain, "final.weights.h5")):
        shutil.rmtree(plain, ignore_errors=True)
        proc = subprocess.run(train_command(data, plain, steps, batch), cwd=REPO, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the unkilled training failed: {proc.stderr[-2000:]}")
    timing = os.path.join(plain, "soak_wall_s.json")
    if os.path.exists(timing):
        plain_s = json.load(open(timing))["wall_s"]
    else:
        plain_s = time.time() - t0
        json.dump({"wall_s": plain_s}, open(timing, "w"))
    t0 = time.time()
    kills, runs, kill_steps = 0, 0, []
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    while True:
        runs += 1
        p = Proc(train_command(data, killed, steps, batch), os.path.join(workdir, "logs", f"train_{runs:02d}.log"),
                 env, "train")
        # Kill at a random moment of the run (start-up included), while kills are left.
        deadline = time.time() + rng.uniform(10.0, max(12.0, plain_s * 0.6)) if kills < FLAGS.train_kills else None
        while p.poll() is None and (deadline is None or time.time() < deadline):
            time.sleep(0.1)
        if p.poll() is None:
            p.kill()
            kills += 1
            ckpts = [int(n[5:-6]) for n in os.listdir(os.path.join(killed, "checkpoints"))
                     if n.startswith("ckpt-") and n.endswith(".index")] if os.path.isdir(
                         os.path.join(killed, "checkpoints")) else []
            kill_steps.append(max(ckpts, default=0))
            log(f"training: SIGKILL {kills} after {time.time() - p.started:.0f} s (last checkpoint: step "
                f"{kill_steps[-1]})")
            continue
        assert p.popen.returncode == 0, f"training run {runs} exited {p.popen.returncode}"
        break
    a, b = os.path.join(plain, "final.weights.h5"), os.path.join(killed, "final.weights.h5")
    equal = filecmp.cmp(a, b, shallow=False)
    assert equal, "final.weights.h5 of the killed run differs from the unkilled run's"
    return {"steps": steps, "batch_size": batch, "kills": kills, "checkpoint_step_at_each_kill": kill_steps,
            "runs": runs, "weights_bytes_compared": os.path.getsize(b),
            "byte_identical": equal, "unkilled_s": round(plain_s, 1), "killed_total_s": round(time.time() - t0, 1)}


def main(argv) -> None:
    del argv
    if not FLAGS.workdir:
        from pfascannet.cliutil import fail  # noqa: PLC0415

        fail("--workdir is required")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    wh = tuple(int(v) for v in FLAGS.slide_px.lower().split("x"))

    def log(line: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    result = {"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "slides": FLAGS.slides,
              "slide_px": FLAGS.slide_px, "procs": FLAGS.procs, "ray": FLAGS.ray, "duration_s": FLAGS.duration_s}
    if FLAGS.scan_soak:
        result["scan"] = scan_soak(os.path.abspath(FLAGS.workdir), wh, log)
    if FLAGS.train_steps > 0:
        result["train"] = train_soak(os.path.abspath(FLAGS.workdir), log)
    text = json.dumps(result, indent=2)
    print(text)
    if FLAGS.out_json:
        from pfascannet.io_utils import write_text  # noqa: PLC0415

        write_text(FLAGS.out_json, text + "\n")


if __name__ == "__main__":
    run_main(main)
