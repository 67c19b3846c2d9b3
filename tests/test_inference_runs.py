"""Real (tiny, random-weight) exports: a replaced model rescans, broken model files and bad flags are
one line and exit 2, before any model loads where the flags alone are wrong (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pfascannet.inference import engine, runs, scan_settings
from tests.scan_support import slide_without_mpp, write_slide

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SID = "patient_001_node_0"
ROI_PX = 916  # Lm = 8 at alpha 16: 12 ROIs over the 1000 x 700 slide
ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")


def _tiny(seed: int):
    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_detector
    from tests.model_support import randomise_weights

    model = build_detector(ModelConfig.tiny(), alpha=16)
    randomise_weights(model, seed=seed)
    return model


def _export(model, out: str, formats=("keras",)) -> None:
    from pfascannet.inference.export import export_detector
    from pfascannet.model.config import ModelConfig

    export_detector(model, ModelConfig.tiny(), out, alpha=16, roi_px=ROI_PX, formats=formats)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model_trust") / f"{SID}.tif")
    write_slide(path, seed=1)
    return path


def _scan(cmd_args, timeout=600):
    cmd = [sys.executable, os.path.join(REPO, "experiments", "scan.py"), "--progress=false", *cmd_args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _export_cli(cmd_args, timeout=600):
    cmd = [sys.executable, os.path.join(REPO, "experiments", "export.py"), *cmd_args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


@pytest.mark.slow  # exports or scans a real model: the full suite runs it, the quick subset does not
def test_model_replaced_between_runs_is_rescanned(slide, tmp_path):
    model_dir, out = str(tmp_path / "M"), str(tmp_path / "S")
    opts = scan_settings.ScanSettings(progress=False, heatmap=False, tissue="all", batch=2)
    _export(_tiny(0), model_dir)
    run_a = runs.load_run(model_dir)
    assert engine.scan_slides(slide, [run_a], out, opts).results[0].status == "done"
    map_a = np.load(os.path.join(out, "maps", f"{SID}.npy"))

    _export(_tiny(1), model_dir)  # model B behind the same path
    run_b = runs.load_run(model_dir)
    assert run_b.digest != run_a.digest and run_b.name == run_a.name
    summary = engine.scan_slides(slide, [run_b], out, opts)
    assert summary.results[0].status == "done", summary.text()
    map_b = np.load(os.path.join(out, "maps", f"{SID}.npy"))
    fresh = str(tmp_path / "fresh")
    engine.scan_slides(slide, [run_b], fresh, opts)
    assert np.array_equal(map_b, np.load(os.path.join(fresh, "maps", f"{SID}.npy")))
    assert not np.array_equal(map_a, map_b)
    # B loaded again (a new process would): same digest, nothing to do.
    assert runs.load_run(model_dir).digest == run_b.digest
    assert engine.scan_slides(slide, [runs.load_run(model_dir)], out, opts).results[0].status == "skipped"


def test_a_slide_at_another_pixel_size_is_read_at_the_models_and_warned_only_when_read_natively(slide, tmp_path):
    import io

    from pfascannet.slide.tiff_writer import write_pyramid_tiff

    model_dir = str(tmp_path / "M")
    _export(_tiny(0), model_dir)  # trained at 0.243 um/px, the default
    coarse = str(tmp_path / "coarse" / "patient_002_node_0.tif")
    os.makedirs(os.path.dirname(coarse))
    noise = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    write_pyramid_tiff(coarse, (1000, 700), lambda x, y, w, h: noise[:h, :w], tiff_tile_px=256, mpp=0.5,
                       compression="deflate", num_levels=2, workers=1)
    run = runs.load_run(model_dir)
    assert run.detector.training_mpp == 0.243
    err = io.StringIO()
    opts = engine.ScanSettings(progress=False, heatmap=False, tissue="all", batch=2, progress_stream=err)
    summary = engine.scan_slides([slide, coarse], [run], str(tmp_path / "S"), opts)
    same, other = sorted(summary.results, key=lambda r: r.path != slide)
    assert same.status == other.status == "done"
    assert not same.warnings and not other.warnings  # both read at 0.243 um/px (0.5 -> 0.25: within a map step)
    assert same.meta["read"]["scale"] == "1/1" and other.meta["read"]["scale"] == "1/2"
    assert other.meta["stride_px"] == 16 and other.meta["read"]["realised_mpp"] == pytest.approx(0.25)
    # Read pixel for pixel (--scan_level 0), the model sees cells at half their size: one warning line.
    err = io.StringIO()
    native = engine.ScanSettings(progress=False, heatmap=False, tissue="all", batch=2, progress_stream=err,
                                scan_level=0)
    (other,) = engine.scan_slides([coarse], [run], str(tmp_path / "N"), native).results
    assert len(other.warnings) == 1 and "0.5 um/px" in other.warnings[0] and "0.243 um/px" in other.warnings[0]
    assert other.meta["warnings"] == other.warnings
    assert "warning: patient_002_node_0: " in err.getvalue()


@pytest.mark.slow  # exports or scans a real model: the full suite runs it, the quick subset does not
def test_truncated_model_files_are_one_error_naming_the_file(tmp_path):
    from pfascannet.inference.detectors import load_detector
    from pfascannet.inference.export_meta import ExportError

    model_dir = str(tmp_path / "M")
    _export(_tiny(0), model_dir, formats=("keras", "savedmodel"))
    keras_file = os.path.join(model_dir, "detector.keras")
    variables = os.path.join(model_dir, "saved_model", "variables")
    data = [os.path.join(variables, f) for f in os.listdir(variables) if ".data-" in f][0]
    for path in (keras_file, data):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ExportError, match="detector.keras.*truncated"):
        load_detector(model_dir, format="keras")
    with pytest.raises(ExportError, match="saved_model.*variables.*truncated"):
        load_detector(model_dir, format="savedmodel")


def test_leftovers_of_a_killed_export_are_removed_by_the_next(tmp_path):
    model_dir = tmp_path / "M"
    model_dir.mkdir()
    (model_dir / ".detector.keras.tmp-abcd1234.keras").write_bytes(b"PK half an archive")
    (model_dir / ".saved_model.tmp-abcd1234").mkdir()
    (model_dir / ".saved_model.tmp-abcd1234" / "saved_model.pb").write_bytes(b"half")
    _export(_tiny(0), str(model_dir))
    assert sorted(os.listdir(model_dir)) == ["detector.keras", "export.json"]


@pytest.mark.slow  # six child processes; 14 s under load
def test_scan_cli_checks_flags_and_slides_before_the_model_loads(slide, tmp_path):
    # A model that would fail to load: any error below that is not about it
    # came before the load.
    model_dir = tmp_path / "M"
    model_dir.mkdir()
    (model_dir / "export.json").write_text('{"alpha": 16, "roi_px": 916, "formats": {"keras": "detector.keras"}}')
    (model_dir / "detector.keras").write_bytes(b"PK\x03\x04 cut short")
    base = [f"--model={model_dir}", f"--out={tmp_path / 'S'}"]

    line = _one_error_line(_scan([*base, f"--slides={tmp_path / 'nope.tif'}"]))
    assert "nope.tif" in line and "no such slide" in line
    for bad in ("nan", "2", "-0.5"):
        line = _one_error_line(_scan([*base, f"--slides={slide}", f"--threshold={bad}"]))
        assert "threshold" in line
    line = _one_error_line(_scan([*base, f"--slides={slide}", "--ensemble_alpha=3"]))
    assert "alpha" in line
    bare = tmp_path / "bare"
    bare.mkdir()
    slide_without_mpp(str(bare / "x.tif"))
    line = _one_error_line(_scan([*base, f"--slides={bare}"]))
    assert "x.tif" in line and "--mpp" in line
    assert not os.path.exists(tmp_path / "S" / "maps")

    # Everything else is right: now the model file is named.
    line = _one_error_line(_scan([*base, f"--slides={slide}"]))
    assert str(model_dir / "detector.keras") in line and "truncated" in line


def test_export_cli_refuses_bad_weights_and_flags_in_one_line(tmp_path):
    out = f"--out={tmp_path / 'E'}"
    text = tmp_path / "w.weights.h5"
    text.write_text("these are not weights\n")
    line = _one_error_line(_export_cli([f"--weights={text}", "--config=tiny", out]))
    assert str(text) in line and "HDF5" in line
    demo = os.path.join(REPO, "pfascannet", "weights", "tiny_demo.weights.h5")
    line = _one_error_line(_export_cli([f"--weights={demo}", "--config=paper", out]))
    assert "tiny_demo.weights.h5" in line and "paper" in line
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(open(demo, "rb").read()[:20000])
    line = _one_error_line(_export_cli([f"--weights={cut}", "--config=tiny", out]))
    assert "cut.weights.h5" in line and "truncated" in line
    line = _one_error_line(_export_cli([f"--weights={demo}", "--config=tiny", "--alpha=3", out]))
    assert "alpha" in line
    assert not os.path.exists(tmp_path / "E")
