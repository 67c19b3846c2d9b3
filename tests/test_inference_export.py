"""Detector export: SavedModel (uint8 signature) and .keras, reloaded and compared with the live model."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pfascannet.inference import detectors, export, export_meta, model_run
from pfascannet.model.dense_pooling import DensePooling
from pfascannet.model.detector import PfaScanNetDetector, build_detector, transfer_weights
from tests.model_support import equivalence_case

ALPHA, ROI_PX, TILE_PX = 16, 1204, 17
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config, patch_model, roi = equivalence_case(seed=3, roi_px=ROI_PX)
    out = tmp_path_factory.mktemp("export")
    meta = export.export_detector(patch_model, config, out, alpha=ALPHA, roi_px=ROI_PX)
    live = build_detector(config, alpha=ALPHA, input_px=ROI_PX)
    transfer_weights(patch_model, live)
    rois = np.stack([roi, roi[::-1, ::-1]])
    want = np.asarray(live.predict_on_batch(rois.astype(np.float32)))[..., 1]
    return out, meta, rois, want, patch_model


def test_export_json_describes_the_geometry(exported):
    out, meta, *_ = exported
    on_disk = json.load(open(os.path.join(out, "export.json")))
    assert on_disk == json.loads(json.dumps(meta))
    assert (meta["alpha"], meta["roi_px"], meta["tile_px"], meta["stride_px"]) == (ALPHA, ROI_PX, TILE_PX, 32)
    assert meta["map_origin_px"] == 346 - 16 and meta["config"]["name"] == "tiny"
    assert set(meta["formats"]) == {"savedmodel", "keras"}


def test_saved_model_signature_equals_live_model(exported):
    out, _meta, rois, want, _ = exported
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["rgb"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, ROI_PX, ROI_PX, 3]
    got = serve(rgb=tf.constant(rois))["tumour_probability"].numpy()
    assert got.shape == (2, TILE_PX, TILE_PX) and got.dtype == np.float32
    assert np.ptp(want) > 0.5  # a comparison that can fail
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_keras_round_trip_is_equal(exported):
    out, _meta, rois, want, _ = exported
    model = keras.saving.load_model(os.path.join(out, "detector.keras"), compile=False)
    assert any(isinstance(layer, DensePooling) and layer.alpha == ALPHA for layer in model.layers)
    got = np.asarray(model.predict_on_batch(rois.astype(np.float32)))[..., 1]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt,cls", [("savedmodel", detectors.SavedModelDetector), ("keras", detectors.KerasDetector)])
def test_load_detector_protocol(exported, fmt, cls):
    out, _meta, rois, want, patch_model = exported
    det = detectors.load_detector(out, format=fmt)
    assert isinstance(det, cls) and isinstance(det, model_run.Detector)
    assert (det.alpha, det.roi_px, det.tile_px, det.stride_px) == (ALPHA, ROI_PX, TILE_PX, 32)
    got = det.predict(rois)
    assert got.dtype == np.float32 and got.shape == (2, TILE_PX, TILE_PX)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The patch classifier: output (u, v) = (3, 5) is the patch at 32 * (3, 5).
    patch = rois[:1, 160:160 + 692, 96:96 + 692]
    np.testing.assert_allclose(det.predict_patches(patch), [want[0, 5, 3]], atol=1e-5)
    with pytest.raises(export_meta.ExportError, match="uint8"):
        det.predict(rois.astype(np.float32))
    with pytest.raises(export_meta.ExportError, match=r"\[N, 1204, 1204, 3\]"):
        det.predict(rois[:, :692, :692])


def test_keras_detector_wraps_a_live_model(exported):
    _out, _meta, rois, want, patch_model = exported
    with pytest.raises(export_meta.ExportError, match="alpha=16, not alpha=32"):
        detectors.KerasDetector(build_detector(detectors.config_from_model(patch_model), alpha=16), alpha=32, roi_px=2708)
    live = build_detector(detectors.config_from_model(patch_model), alpha=ALPHA)
    transfer_weights(patch_model, live)
    det = detectors.KerasDetector(live, ALPHA, ROI_PX)
    np.testing.assert_allclose(det.predict(rois), want, atol=1e-5)


@pytest.mark.slow  # exports or scans a real model: the full suite runs it, the quick subset does not
def test_export_reads_config_and_training_mpp_from_the_model(tmp_path, exported):
    *_, rois, want, patch_model = exported
    assert _meta_of(exported)["training_mpp"] == 0.243  # the default: Camelyon level 0
    for fmt in ("savedmodel", "keras"):
        assert detectors.load_detector(exported[0], format=fmt).training_mpp == 0.243
    config = detectors.config_from_model(patch_model)
    at_half = build_detector(config, alpha=1, input_px=692, training_mpp=0.5)
    transfer_weights(patch_model, at_half)
    meta = export.export_detector(at_half, None, tmp_path / "E", alpha=ALPHA, roi_px=ROI_PX)
    assert meta["config"] == config.to_dict() and meta["training_mpp"] == 0.5
    for fmt in ("savedmodel", "keras"):
        det = detectors.load_detector(tmp_path / "E", format=fmt)
        assert det.training_mpp == 0.5
    np.testing.assert_allclose(det.predict(rois), want, atol=1e-5)
    assert det.at_roi_px(ROI_PX + 32).training_mpp == 0.5
    assert detectors.load_detector(tmp_path / "E", format="keras", precision="bfloat16").training_mpp == 0.5
    other = dataclasses.replace(config, bm_channels=3)
    with pytest.raises(export_meta.ExportError, match="not the given"):
        export.export_detector(at_half, other, tmp_path / "F", alpha=ALPHA, roi_px=ROI_PX, formats=("keras",))


def test_exports_from_before_the_model_carried_its_config_still_load(tmp_path, exported):
    # Such an export's .keras is a plain functional model and its export.json has no training_mpp.
    out, meta, rois, want, _ = exported
    model = keras.saving.load_model(os.path.join(out, "detector.keras"), compile=False)
    old = tmp_path / "old"
    old.mkdir()
    keras.Model(model.inputs, model.outputs, name="pfascannet_detector_tiny_alpha16").save(old / "detector.keras")
    old_meta = {k: v for k, v in meta.items() if k != "training_mpp"}
    old_meta["formats"] = {"keras": "detector.keras"}
    (old / "export.json").write_text(json.dumps(old_meta))
    det = detectors.load_detector(old)
    assert type(det.model) is not PfaScanNetDetector
    assert (det.alpha, det.training_mpp) == (ALPHA, 0.243)
    assert detectors.config_from_model(det.model).widths == tuple(meta["config"]["widths"])
    np.testing.assert_allclose(det.predict(rois), want, atol=1e-5)
    rebuilt = detectors.load_detector(old, precision="bfloat16").model
    assert isinstance(rebuilt, PfaScanNetDetector) and rebuilt.alpha == ALPHA


def test_mpp_mismatch_beyond_ten_percent():
    assert export_meta.mpp_mismatch(0.243, 0.243) is None
    assert export_meta.mpp_mismatch(0.243, 0.26) is None  # +7 %: scanners of one magnification vary this much
    assert export_meta.mpp_mismatch(0.243, 0.22) is None  # -9 %
    assert export_meta.mpp_mismatch(None, 0.5) is None and export_meta.mpp_mismatch(0.243, None) is None
    text = export_meta.mpp_mismatch(0.243, 0.5)
    assert "0.5 um/px" in text and "0.243 um/px" in text and "106 %" in text
    assert "0.243 um/px" in export_meta.mpp_mismatch(0.243, 0.2)  # -18 %


def _meta_of(exported):
    return json.load(open(os.path.join(exported[0], "export.json")))


def test_load_detector_errors(tmp_path, exported):
    with pytest.raises(FileNotFoundError):
        detectors.load_detector(tmp_path / "missing")
    with pytest.raises(export_meta.ExportError, match="no export.json"):
        detectors.load_detector(tmp_path)
    out = exported[0]
    with pytest.raises(export_meta.ExportError, match="serves roi_px=1204 only"):
        detectors.load_detector(out, format="savedmodel", roi_px=2708)


@pytest.mark.slow  # the script in a child process; 21 s under load
def test_check_equivalence_command(exported):
    out = exported[0]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.join(REPO, "experiments", "check_equivalence.py"), "--model", str(out), "--positions", "6"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "OK" in ok.stdout and "max |diff|" in ok.stdout
    control = cmd + ["--shift_px", "8", "--format", "keras", "--positions", "4"]
    bad = subprocess.run(control, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout
