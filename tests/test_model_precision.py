"""Precision (float32 / bfloat16 / float16) and XLA for export and scan.

The central invariant (dense == patch classifier, DESIGN.md §1) must hold at
every precision within ``precision.EQUIVALENCE_TOLERANCE`` (its docstring says
why those bounds); a lower-precision map must stay within a recorded bound of
the float32 map on a real synthetic slide with trained weights; the precision
is part of a map's fingerprint; XLA must not change the numbers.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import detectors, engine, export, export_meta, model_io, model_run, runs, scan_settings, xla
from pfascannet.model import precision as precision_lib
from pfascannet.model.detector import build_detector, build_patch_classifier, transfer_weights
from pfascannet.model.equivalence import compare_dense_to_patches, sample_positions
from tests.model_support import equivalence_case

ALPHA, ROI_PX = 16, 1204

MAP_BOUND = {"bfloat16": 0.02, "float16": 0.05}
"""Largest |map - float32 map| accepted on a synthetic slide with the shipped tiny weights.

Measured 2026-11-27 on patient_000_node_2 of the session cohort: bfloat16
0.0040, float16 0.020 (float16 differs more here and, without float16
hardware on this CPU, runs 3x slower than bfloat16); the bounds are about
2.5-5x those.  BENCHMARKS.md "Precision" has the demo cohort's figures.
"""


@pytest.fixture(scope="module")
def case():
    return equivalence_case(seed=0, roi_px=ROI_PX)


@pytest.mark.parametrize("precision", [
    p if p != "float16" else pytest.param(p, marks=pytest.mark.slow)  # float16 is emulated on CPUs: slow
    for p in precision_lib.PRECISIONS
])
def test_dense_equals_patch_classifier_at_each_precision(case, precision):
    config, patch32, roi = case
    tol = precision_lib.EQUIVALENCE_TOLERANCE[precision]
    dense = build_detector(config, alpha=ALPHA, input_px=ROI_PX, precision=precision)
    patch = build_patch_classifier(config, precision=precision)
    transfer_weights(patch32, dense)
    transfer_weights(patch32, patch)
    tile = np.asarray(dense.predict_on_batch(roi[None].astype(np.float32)))[0, ..., 1]

    def patch_fn(p):
        return np.asarray(patch.predict_on_batch(p.astype(np.float32)))[..., 1]

    positions = sample_positions(tile.shape[0], 16, 0)
    same = compare_dense_to_patches(None, patch_fn, roi, ALPHA, positions, dense_tile=tile)
    # Control: patches half an output stride (16 px) off, at the same 16 positions.
    shifted = compare_dense_to_patches(None, patch_fn, roi, ALPHA, positions, dense_tile=tile, shift_px=16)
    assert same.spread > 0.5  # outputs spread over most of 0..1: the comparison can fail
    assert same.max_abs_diff <= tol, (precision, same.max_abs_diff)
    assert shifted.max_abs_diff > 5 * tol, (precision, shifted.max_abs_diff)  # the control fails


def test_mixed_precision_keeps_normalisation_and_softmax_in_float32():
    before = keras.config.dtype_policy().name
    model = build_detector(_tiny(), alpha=16, precision="bfloat16")
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("normalise").compute_dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)  # one weights file serves every precision
    assert precision_lib.model_precision(model) == "bfloat16"
    with pytest.raises(precision_lib.PrecisionError, match="float32, bfloat16, float16"):
        precision_lib.check_precision("fp8")


def _tiny():
    from pfascannet.model.config import ModelConfig  # noqa: PLC0415

    return ModelConfig.tiny()


@pytest.fixture(scope="module")
def bf16_export(case, tmp_path_factory):
    config, patch32, roi = case
    out = tmp_path_factory.mktemp("export_bf16")
    meta = export.export_detector(patch32, config, out, alpha=ALPHA, roi_px=ROI_PX, precision="bfloat16")
    return out, meta


def test_export_records_precision_and_serves_it(case, bf16_export):
    config, patch32, roi = case
    out, meta = bf16_export
    assert meta["precision"] == json.load(open(os.path.join(out, "export.json")))["precision"] == "bfloat16"
    live = {}
    for p in ("float32", "bfloat16"):
        m = build_detector(config, alpha=ALPHA, input_px=ROI_PX, precision=p)
        transfer_weights(patch32, m)
        live[p] = np.asarray(m.predict_on_batch(roi[None].astype(np.float32)))[..., 1]
    sm = detectors.load_detector(out, format="savedmodel")
    assert sm.precision == "bfloat16"
    np.testing.assert_allclose(sm.predict(roi[None]), live["bfloat16"], atol=1e-3)
    ks = detectors.load_detector(out, format="keras")
    assert ks.precision == "bfloat16"
    np.testing.assert_allclose(ks.predict(roi[None]), live["bfloat16"], atol=1e-6)
    # Another precision: the .keras model rebuilt with the same weights; the SavedModel refuses.
    f32 = detectors.load_detector(out, format="keras", precision="float32")
    assert f32.precision == "float32" and f32.digest == ks.digest
    np.testing.assert_allclose(f32.predict(roi[None]), live["float32"], atol=1e-6)
    with pytest.raises(export_meta.ExportError, match="computes in bfloat16 only"):
        detectors.load_detector(out, format="savedmodel", precision="float32")
    assert runs.resolve_run(str(out)).format == "auto"
    assert runs.resolve_run(str(out), precision="float32").format == "keras"
    run = runs.load_run(str(out), precision="float32")
    assert run.precision == "float32" and "precision" not in run.describe()
    assert runs.load_run(str(out)).describe()["precision"] == "bfloat16"
    with pytest.raises(precision_lib.PrecisionError):
        runs.resolve_run(str(out), precision="half")


@pytest.mark.slow  # an XLA compilation; 8 s under load
def test_xla_gives_the_same_numbers(case, bf16_export):
    config, patch32, roi = case
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's jit_compile")
    import tensorflow as tf  # noqa: PLC0415

    # auto: on a GPU only (XLA was measured no faster in float32, 3x slower in bf16 on the CPU)
    assert xla.resolve_xla("auto") is bool(tf.config.list_physical_devices("GPU"))
    model = build_detector(config, alpha=ALPHA, input_px=None)
    transfer_weights(patch32, model)
    plain = detectors.KerasDetector(model, ALPHA, ROI_PX, xla="off")
    want = plain.predict(roi[None])
    compiled = detectors.KerasDetector(model, ALPHA, ROI_PX, xla="on")
    assert compiled.xla and model.jit_compile
    np.testing.assert_allclose(compiled.predict(roi[None]), want, atol=1e-4)
    out, _ = bf16_export
    sm_plain = detectors.load_detector(out, format="savedmodel", xla="off")
    sm_xla = detectors.load_detector(out, format="savedmodel", xla="on")
    assert sm_xla.xla and not sm_plain.xla
    # bfloat16 through two kernel families (XLA's, oneDNN's): each sums in its
    # own order and every layer rounds to 8 bits, so on this ROI, whose
    # classifier amplifies small feature differences into probabilities over
    # 0..1, they differ by up to ~0.05 (float32 above: 1e-4).
    np.testing.assert_allclose(sm_xla.predict(roi[None]), sm_plain.predict(roi[None]), atol=0.1)
    with pytest.raises(export_meta.ExportError, match="auto, on, off"):
        detectors.load_detector(out, xla="yes")


@pytest.mark.slow  # a cohort slide scanned twice; 28 s under load
def test_bfloat16_map_of_a_real_slide_stays_within_the_bound(cohort, tmp_path):
    from pfascannet import workflow  # noqa: PLC0415
    from pfascannet.inference.model_io import load_training_model  # noqa: PLC0415

    weights, _ = workflow.shipped_weights("tiny_demo")
    trained = load_training_model(weights, "tiny")
    slide = str(cohort / "images" / "patient_000_node_2.tif")
    opts = scan_settings.ScanSettings(batch=1, heatmap=False, progress=False)
    out = str(tmp_path / "scan")
    maps = {}
    for p in ("float32", "bfloat16", "float16"):
        model = build_detector(_tiny(), alpha=16, precision=p)
        transfer_weights(trained, model)
        det = detectors.KerasDetector(model, 16, geometry.PAPER_ROI_PX, digest="shipped-tiny-demo")
        result = engine.scan_slides(slide, [model_run.ModelRun(det, det_grid(det), name="tiny")], out, opts).results[0]
        # Same weights, same digest: only the precision in the fingerprint makes this a new map.
        assert result.status == "done", (p, result.status)
        maps[p] = np.load(os.path.join(out, "maps", "patient_000_node_2.npy"))
        members = json.load(open(os.path.join(out, "maps", "patient_000_node_2.json")))["members"]
        assert members[0].get("precision", "float32") == p
    assert np.ptp(maps["float32"]) > 0.3  # a map with something on it
    for p, bound in MAP_BOUND.items():
        diff = float(np.abs(maps[p] - maps["float32"]).max())
        print(f"{p}: max |map - float32 map| = {diff:.5f}")
        assert diff <= bound, (p, diff)


def det_grid(det):
    return geometry.ScanGeometry(det.alpha, det.roi_px)


@pytest.mark.slow  # training steps per precision; 14-22 s each under load
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_training_runs_a_few_steps_in_mixed_precision(cohort, tmp_path, precision):
    from pfascannet.training import trainer  # noqa: PLC0415

    s = trainer.TrainSettings.from_flat(data=str(cohort), workdir=str(tmp_path / precision), config="tiny",
                                        steps=3, batch_size=1, random_per_class=1, boundary=0, itc=0, learning_rate=1e-3,
                              checkpoint_every=3, log_every=1, precision=precision)
    result = trainer.train(s)
    assert result.step == 3 and all(np.isfinite(h[1]["total"]) for h in result.history)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    config = json.load(open(tmp_path / precision / "config.json"))
    assert config["settings"]["precision"] == precision
    # The weights file is float32 and loads into the float32 model for export.
    model = model_io.load_training_model(result.final_weights, "tiny")
    assert all(w.dtype == "float32" for w in model.weights)
    with pytest.raises(trainer.TrainingError, match="precision"):
        trainer.TrainSettings.from_flat(data=str(cohort), workdir=str(tmp_path / "x"), precision="half")


# --precision auto (issue 24): chosen by the CPU's features, never recorded as "auto".

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags, expected", [
    (AMX, "bfloat16"),
    (AVX512_BF16, "bfloat16"),  # measured 2.2-2.6x faster than float32 at paper widths (BENCHMARKS.md)
    (AVX2, "float32"),  # bfloat16 would be emulated
    (frozenset({"avx512f"}), "float32"),  # AVX-512 without BF16
    (None, "float32"),  # no /proc/cpuinfo (not Linux)
])
def test_auto_precision_follows_the_cpu_features(flags, expected):
    choice = precision_lib.choose_precision("auto", cpu_flags=lambda: flags)
    assert choice.precision == expected and choice.requested == "auto"
    assert choice.line().startswith(f"precision auto -> {expected} (")
    assert precision_lib.resolve_precision("auto", cpu_flags=lambda: flags) == expected


@pytest.mark.parametrize("flags", [AMX, AVX2, None])
@pytest.mark.parametrize("explicit", precision_lib.PRECISIONS)
def test_an_explicit_precision_is_unchanged(explicit, flags):
    assert precision_lib.resolve_precision(explicit, cpu_flags=lambda: flags) == explicit
    assert precision_lib.resolve_precision(None, cpu_flags=lambda: flags) is None
    with pytest.raises(precision_lib.PrecisionError):
        precision_lib.resolve_precision("half", cpu_flags=lambda: flags)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert precision_lib.read_cpu_flags(str(info)) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert precision_lib.read_cpu_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flags, expected", [(AMX, "bfloat16"), (AVX2, "float32")])
def test_scan_resolves_auto_before_loading_and_records_the_choice(bf16_export, monkeypatch, capsys, flags, expected):
    out, _ = bf16_export
    monkeypatch.setattr(precision_lib, "read_cpu_flags", lambda path=precision_lib.CPUINFO: flags)
    specs = runs.resolve_runs(str(out), precision="auto", ensemble=[str(out)], ensemble_alpha=ALPHA)
    assert [s.precision for s in specs] == [expected, expected]
    assert capsys.readouterr().out.count(f"precision auto -> {expected}") == 1  # said once, for the scan
    # The export is bfloat16: auto -> bfloat16 serves its SavedModel; float32 rebuilds the .keras model.
    assert specs[0].format == ("auto" if expected == "bfloat16" else "keras")
    run = runs.load_spec(specs[0])
    assert run.precision == expected
    assert run.describe().get("precision", "float32") == expected  # the fingerprint: resolved, never "auto"


def test_export_resolves_auto(case, tmp_path, monkeypatch):
    config, patch32, _ = case
    monkeypatch.setattr(precision_lib, "read_cpu_flags", lambda path=precision_lib.CPUINFO: AVX2)
    meta = export.export_detector(patch32, config, tmp_path / "e", alpha=ALPHA, roi_px=ROI_PX,
                                  formats=("keras",), precision="auto")
    assert meta["precision"] == "float32"


@pytest.mark.slow  # a child process that imports TensorFlow and scans one small slide; ~20 s
def test_scan_cli_says_which_precision_auto_chose(case, tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.scan_support import write_slide  # noqa: PLC0415

    config, patch32, _ = case
    model = str(tmp_path / "export")
    export.export_detector(patch32, config, model, alpha=16, roi_px=916, formats=("keras",))
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(str(slides / "patient_001_node_0.tif"), seed=1)
    out = str(tmp_path / "scan")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(repo, "experiments", "scan.py"), f"--model={model}", f"--slides={slides}",
           f"--out={out}", "--precision=auto", "--tissue=all", "--heatmap=false", "--progress=false"]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = precision_lib.choose_precision("auto")  # this machine's choice
    assert chosen.line() in proc.stdout
    with open(os.path.join(out, "maps", "patient_001_node_0.json")) as f:
        members = json.load(f)["members"]
    assert members[0].get("precision", "float32") == chosen.precision  # resolved, never "auto"
    with open(os.path.join(out, "scan_config.json")) as f:
        assert json.load(f)["runs"][0].get("precision", "float32") == chosen.precision
