"""The trainer: MirroredStrategy over two devices, kill and resume, loss falls (Sec. 2.3, eq. (3))."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pfascannet.inference import model_io
from pfascannet.training import mining, recipe, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dir(cohort):
    return os.fspath(getattr(cohort, "out_dir", cohort))


def _settings(cohort, workdir, **kw):
    base = dict(data=_dir(cohort), workdir=str(workdir), steps=4, batch_size=2, learning_rate=0.002,
                random_per_class=2, boundary=1, itc=1, checkpoint_every=2, log_every=1, num_parallel_calls=2)
    base.update(kw)
    return trainer.TrainSettings.from_flat(**base)


def _run_child(code, *args, timeout=240):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))


def _weights(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.slow  # a child process; 33 s under load
def test_two_steps_under_mirrored_strategy_on_two_cpu_devices(cohort, tmp_path):
    # Logical devices must be configured before TensorFlow initialises: a child process.
    code = """
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from pfascannet.training import distribute, trainer
        strategy = distribute.make_strategy()
        s = trainer.TrainSettings.from_flat(data=sys.argv[1], workdir=sys.argv[2], steps=2, batch_size=2,
                                  learning_rate=0.002, random_per_class=1, boundary=1, itc=0,
                                  log_every=1, num_parallel_calls=2)
        r = trainer.train(s, on_progress=None, strategy=strategy)
        print(json.dumps({"replicas": strategy.num_replicas_in_sync, "step": r.step,
                          "losses": [h[1]["total"] for h in r.history]}))
    """
    proc = _run_child(code, _dir(cohort), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["step"] == 2
    assert all(np.isfinite(out["losses"]))
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["replicas"] == 2 and len(cfg["devices"]) == 2
    assert cfg["settings"]["momentum"] == 0.9 and cfg["settings"]["lambda_seg"] == 0.5
    assert os.path.exists(tmp_path / "final.weights.h5")
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.slow  # three training processes; 87 s under load
def test_killed_run_resumes_to_the_uninterrupted_weights(cohort, tmp_path):
    # 3 samples an epoch, 5 steps of 1: the run crosses into epoch 1, whose
    # positions the sample stream draws afresh, so resume covers the stream too.
    kw = dict(steps=5, batch_size=1, random_per_class=1, boundary=1, itc=0, checkpoint_every=1,
              optimizer="adam", warmup_steps=3)
    whole = trainer.train(_settings(cohort, tmp_path / "whole", **kw), on_progress=None)
    assert whole.step == 5 and whole.resumed_from == 0

    # The same run, killed with SIGKILL right after step 2 (checkpoint of step 1 on disk).
    code = """
        import os, signal, sys
        from pfascannet.training import trainer
        s = trainer.TrainSettings.from_flat(data=sys.argv[1], workdir=sys.argv[2], steps=5, batch_size=1,
                                  learning_rate=0.002, random_per_class=1, boundary=1, itc=0,
                                  checkpoint_every=1, log_every=1, num_parallel_calls=2,
                                  optimizer="adam", warmup_steps=3)
        def die(p):
            if p.step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        trainer.train(s, on_progress=die)
    """
    killed = tmp_path / "killed"
    proc = _run_child(code, _dir(cohort), str(killed))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not os.path.exists(killed / "final.weights.h5")
    assert os.path.exists(killed / "checkpoints" / "ckpt-1.index")
    assert not os.path.exists(killed / "checkpoints" / "ckpt-2.index")

    resumed = trainer.train(_settings(cohort, killed, **kw), on_progress=None)
    assert resumed.resumed_from == 1 and resumed.step == 5
    a, b = _weights(whole.final_weights), _weights(resumed.final_weights)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    # A finished run resumed again does nothing and keeps its weights.
    again = trainer.train(_settings(cohort, killed, **kw), on_progress=None)
    assert again.resumed_from == 5 and again.history == []


@pytest.mark.slow  # 20 training steps; 12 s under load
def test_loss_falls_over_twenty_steps(cohort, tmp_path):
    s = _settings(cohort, tmp_path, steps=20, batch_size=1, random_per_class=1, boundary=0, itc=0,
                  augment=False, checkpoint_every=100, log_every=100)
    r = trainer.train(s, on_progress=None)
    total = [h[1]["total"] for h in r.history]
    assert len(total) == 20 and np.all(np.isfinite(total))
    assert np.mean(total[-6:]) < 0.9 * np.mean(total[:6]), total

    # The trained weights export as a detector whose patch output is the
    # training model's classifier (experiments/export.py's library path).
    from pfascannet.inference.detectors import load_detector

    model_io.export_trained(str(tmp_path / "export"), "tiny", alpha=1, roi_px=692, formats=("keras",),
                           checkpoint=r.checkpoint)
    detector = load_detector(tmp_path / "export")
    model = model_io.load_training_model(r.final_weights, "tiny")
    patch = np.random.default_rng(0).integers(0, 256, (1, 692, 692, 3), dtype=np.uint8)
    want = np.asarray(model(patch.astype(np.float32))["classifier"])[:, 1]
    np.testing.assert_allclose(detector.predict(patch).reshape(-1), want, atol=1e-5)


@pytest.mark.slow  # a training run with a mining round; 14 s under load
def test_without_synergistic_learning_and_with_hard_negatives(cohort, tmp_path):
    # One short run checks two switches: "w/o SL" leaves the decoder untouched, and
    # the hard-negative stage (threshold 0: every scanned normal patch is a false
    # positive) adds what it found to the training samples.
    s = _settings(cohort, tmp_path, steps=2, batch_size=1, random_per_class=1, boundary=0, itc=0,
                  synergistic=False, augment=False, hard_negative_at=1, hard_negative_candidates=3,
                  hard_negative_threshold=0.0, hard_negative_source="patches")
    r = trainer.train(s, on_progress=None)
    assert [h[1]["segmentation"] for h in r.history] == [0.0, 0.0]
    from pfascannet.data import sampling

    hard = sampling.load_samples(tmp_path / "hard_negatives.csv")
    assert len(hard) == 3 and all(h.kind == "hard_negative" and h.label == 0 for h in hard)
    assert r.samples == 2 + 3

    model = model_io.load_training_model(r.final_weights, "tiny")
    fresh = model_io.load_training_model(r.final_weights, "tiny")
    recipe.he_initialise(fresh, s.seed)  # the decoder weights as they were before step 1
    from pfascannet.model.config import get_config
    from pfascannet.model.detector import build_patch_classifier

    detector_names = {layer.name for layer in build_patch_classifier(get_config("tiny")).layers}
    dec = [layer for layer in model.layers if layer.weights and layer.name not in detector_names]
    assert len(dec) >= 4
    for a, b in zip(dec, [fresh.get_layer(layer.name) for layer in dec]):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    trunk = model.get_layer("block1_conv1").get_weights()[0]
    assert not np.array_equal(trunk, fresh.get_layer("block1_conv1").get_weights()[0])


@pytest.mark.slow  # trainings and scans of the training slides; 89 s under load
def test_hard_negative_rounds_scan_the_training_slides_and_resume(cohort, tmp_path, monkeypatch):
    # Rounds at steps 1 and 3 (every 2): each scans the training slides with the
    # weights of that moment and keeps the confident maxima in normal tissue.
    from pfascannet.data import sampling

    mined = []
    real_mine = mining.run_round

    def counting_mine(s, *args):
        mined.append(args[-1])
        return real_mine(s, *args)

    monkeypatch.setattr(mining, "run_round", counting_mine)
    s = _settings(cohort, tmp_path, steps=4, batch_size=1, random_per_class=1, boundary=0, itc=0, augment=False,
                  hard_negative_at=1, hard_negative_every=2, hard_negative_threshold=0.0, hard_negative_max=5)
    assert s.mining.source == "slides" and s.mining_steps() == [1, 3]
    r = trainer.train(s, on_progress=None)
    assert mined == [1, 3]
    sampler = sampling.PatchSampler(sampling.load_cohort(_dir(cohort), "train"))
    rounds = [sampling.load_samples(tmp_path / "hard_negatives.csv"),
              sampling.load_samples(tmp_path / "hard_negatives_step3.csv")]
    for step, found in zip((1, 3), rounds):
        assert 0 < len(found) <= 5
        maps = tmp_path / "mining" / f"step_{step}" / "maps"
        assert sorted(p.stem for p in maps.glob("*.npy")) == sorted(sampler.slides)
        for h in found:
            assert h.kind == "hard_negative" and h.label == 0
            cx, cy = h.centre_xy
            assert sampler.truth(h.slide_id).label_at((cx, cy)) == 0
            prob = np.load(maps / f"{h.slide_id}.npy")
            assert prob[cy // 32, cx // 32] > 0  # a maximum of the map, in scanned tissue
    both = {(h.slide_id, h.x, h.y) for found in rounds for h in found}
    assert r.samples == 2 + len(both)

    # Resumed to 6 steps: rounds 1 and 3 are read back, only the new round at 5 runs.
    mined.clear()
    r2 = trainer.train(dataclasses.replace(s, steps=6), on_progress=None)
    assert mined == [5] and r2.resumed_from == 4
    assert (tmp_path / "hard_negatives_step5.csv").exists()


def test_learning_rate_warms_up_then_decays_to_zero(cohort, tmp_path):
    opt = recipe.make_optimizer(_settings(cohort, tmp_path, optimizer="adam", learning_rate=1e-3, warmup_steps=4,
                                           lr_schedule="cosine", steps=104))
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    rates = [float(schedule(i)) for i in (0, 3, 4, 54, 104, 200)]
    np.testing.assert_allclose(rates, [2.5e-4, 1e-3, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    with pytest.raises(trainer.TrainingError, match="lr_schedule must be one of"):
        _settings(cohort, tmp_path, lr_schedule="step")
    with pytest.raises(trainer.TrainingError, match="hard_negative_source must be one of"):
        _settings(cohort, tmp_path, hard_negative_source="random")


def test_settings_and_workdir_errors_are_clear(cohort, tmp_path):
    with pytest.raises(trainer.TrainingError, match="batch_size"):
        _settings(cohort, tmp_path, batch_size=0)
    with pytest.raises(trainer.TrainingError, match="no such dataset folder"):
        _settings(cohort, tmp_path, data=str(tmp_path / "nope"))
    from pfascannet.errors import PfaError

    with pytest.raises(PfaError, match="gamma"):
        _settings(cohort, tmp_path, gamma=0.9)
    os.makedirs(tmp_path / "w")
    json.dump({"settings": dict(_settings(cohort, tmp_path / "w").flat(), seed=99)},
              open(tmp_path / "w" / "config.json", "w"))
    with pytest.raises(trainer.TrainingError, match="other settings"):
        trainer.train(_settings(cohort, tmp_path / "w"), on_progress=None)


def test_recipe_settings_are_checked_and_resolved(cohort, tmp_path):
    with pytest.raises(trainer.TrainingError, match="optimizer must be one of"):
        _settings(cohort, tmp_path, optimizer="rmsprop")
    with pytest.raises(trainer.TrainingError, match="needs config 'paper_imagenet'"):
        _settings(cohort, tmp_path, kernel_init="imagenet", config="paper")
    with pytest.raises(trainer.TrainingError, match="no such file"):
        _settings(cohort, tmp_path, kernel_init="imagenet", config="paper_imagenet",
                  imagenet_weights=str(tmp_path / "none.h5"))
    adam = recipe.make_optimizer(_settings(cohort, tmp_path, optimizer="adam", learning_rate=1e-3, warmup_steps=4))
    assert type(adam).__name__ == "Adam"
    schedule = adam.learning_rate if callable(adam.learning_rate) else adam._learning_rate
    ramp = [float(schedule(i)) for i in (0, 1, 3, 10)]
    np.testing.assert_allclose(ramp, [2.5e-4, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    sgd = recipe.make_optimizer(_settings(cohort, tmp_path))
    assert type(sgd).__name__ == "SGD" and float(sgd.learning_rate) == pytest.approx(0.002)


def test_a_run_written_before_the_recipe_settings_still_resumes(cohort, tmp_path):
    # config.json of an older run has no optimizer / warmup_steps / stream keys:
    # it trained with SGD, no warm-up, one replayed draw.
    work = tmp_path / "old"
    os.makedirs(work)
    old = _settings(cohort, work, optimizer="sgd", warmup_steps=0, stream=False).flat()
    for key in ("optimizer", "warmup_steps", "stream", "imagenet_weights", "hard_negative_every",
                "hard_negative_source", "lr_schedule"):
        old.pop(key)
    json.dump({"settings": old}, open(work / "config.json", "w"))
    resolved = {"settings": _settings(cohort, work, stream=False).flat()}
    trainer._check_workdir_config(str(work / "config.json"), resolved)  # same run: no error
    with pytest.raises(trainer.TrainingError, match="stream"):
        trainer._check_workdir_config(str(work / "config.json"), {"settings": _settings(cohort, work).flat()})
    # An older run that mined hard negatives mined random patches, one round.
    old_mining = dict(old, hard_negative_at=2)
    json.dump({"settings": old_mining}, open(work / "config.json", "w"))
    same = _settings(cohort, work, stream=False, hard_negative_at=2, hard_negative_source="patches")
    trainer._check_workdir_config(str(work / "config.json"), {"settings": same.flat()})
    with pytest.raises(trainer.TrainingError, match="hard_negative_source"):
        slides = same.replace(hard_negative_source="slides")
        trainer._check_workdir_config(str(work / "config.json"), {"settings": slides.flat()})


@pytest.mark.slow  # a full-width VGG16 trunk; 27 s under load
def test_imagenet_start_loads_the_trunk_and_keeps_he_elsewhere(cohort, tmp_path):
    import keras

    from pfascannet.model.config import get_config
    from pfascannet.model.detector import build_training_model

    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    vgg.save_weights(path)
    s = _settings(cohort, tmp_path / "run", config="paper_imagenet", kernel_init="imagenet", imagenet_weights=path,
                  steps=1, batch_size=1, random_per_class=1, boundary=0, itc=0, learning_rate=1e-12)
    result = trainer.train(s, on_progress=None)
    model = build_training_model(get_config("paper_imagenet"))
    model.load_weights(result.final_weights)
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        np.testing.assert_allclose(model.get_layer(name).get_weights()[0], vgg.get_layer(name).get_weights()[0],
                                   rtol=0, atol=1e-6, err_msg=name)
