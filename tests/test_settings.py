"""One declaration per setting: flags generated from the settings dataclasses, flat names, old runs resume."""

import dataclasses
import io
import json

import pytest
from absl import flags

from pfascannet import settings as settings_lib
from pfascannet.data.augment_settings import AugmentSettings
from pfascannet.synthetic.cohort import CohortError, CohortSettings
from pfascannet.training import recipe, trainer
from pfascannet.training.settings import TrainSettings, TrainingError

# Flags of the commands before they were generated (README and BUILD.md use them).
DOCUMENTED_TRAIN_FLAGS = {
    "config", "data", "workdir", "steps", "batch_size", "learning_rate", "optimizer", "warmup_steps", "stream",
    "precision", "momentum", "lambda_seg", "gamma", "synergistic", "seed", "split", "random_per_class", "boundary",
    "itc", "augment", "tfrecords", "checkpoint_every", "log_every", "hard_negative_at", "hard_negative_every",
    "hard_negative_source", "hard_negative_candidates", "hard_negative_threshold", "hard_negative_max",
    "lr_schedule", "strategy", "collective", "collective_timeout_s", "kernel_init", "imagenet_weights",
}


def _flags(cls):
    fv = flags.FlagValues()
    names = settings_lib.define_flags(cls, fv)
    return fv, names


def test_train_flags_are_generated_from_the_fields_with_help(tmp_path):
    (tmp_path / "images").mkdir()  # --data must be a dataset folder (datasets.detect_layout)
    fv, names = _flags(TrainSettings)
    leaves = settings_lib.leaves(TrainSettings)
    assert set(names) == {leaf.name for leaf in leaves if leaf.flag}
    assert DOCUMENTED_TRAIN_FLAGS <= set(names)
    # Every augmentation range is a flag now, named after AugmentSettings's fields.
    assert {f"augment_{f.name}" for f in dataclasses.fields(AugmentSettings)} <= set(names)
    for name in names:
        assert len(fv[name].help) > 10, name
    assert fv["optimizer"].parser.enum_values == ["sgd", "adam"]
    # Defaults are the dataclass's.
    fv(["prog", f"--data={tmp_path}", "--workdir=w"])
    built = settings_lib.from_flags(TrainSettings, fv)
    assert built == TrainSettings(data=str(tmp_path), workdir="w")


def test_flags_build_the_nested_settings(tmp_path):
    (tmp_path / "images").mkdir()  # --data must be a dataset folder (datasets.detect_layout)
    fv, _ = _flags(TrainSettings)
    fv(["prog", f"--data={tmp_path}", "--workdir=w", "--learning_rate=0.003", "--optimizer=adam",
        "--hard_negative_at=5", "--hard_negative_max=7", "--augment_scale_range=0.8,1.25", "--nosynergistic"])
    s = settings_lib.from_flags(TrainSettings, fv, max_seconds=60.0)
    assert s.optimiser.learning_rate == 0.003 and s.optimiser.optimizer == "adam"
    assert s.mining.at == 5 and s.mining.max_keep == 7 and not s.loss.synergistic
    assert s.augmentation.scale_range == (0.8, 1.25) and s.max_seconds == 60.0
    fv2, _ = _flags(TrainSettings)
    fv2(["prog", f"--data={tmp_path}", "--workdir=w", "--noaugment"])
    assert settings_lib.from_flags(TrainSettings, fv2).augmentation is None
    fv3, _ = _flags(TrainSettings)
    fv3(["prog", f"--data={tmp_path}", "--workdir=w", "--augment_contrast=0.9"])
    with pytest.raises(settings_lib.SettingsError, match="augment_contrast must be 2 comma-separated numbers"):
        settings_lib.from_flags(TrainSettings, fv3)


def test_flat_names_round_trip(tmp_path):
    (tmp_path / "images").mkdir()  # --data must be a dataset folder (datasets.detect_layout)
    s = TrainSettings.from_flat(data=str(tmp_path), workdir="w", learning_rate=1e-3, random_per_class=3,
                                augment_hue=0.1, hard_negative_at=4, precision="bfloat16")
    flat = s.flat()
    assert TrainSettings.from_flat(**flat) == s
    assert flat["learning_rate"] == 1e-3 and flat["augment"] is True and flat["augment_hue"] == 0.1
    assert s.replace(steps=6).steps == 6 and s.replace(augment=False).augmentation is None
    # config.json's settings: every flat name, JSON-able, and back.
    assert TrainSettings.from_flat(**json.loads(json.dumps(flat))) == s
    with pytest.raises(TypeError, match="no setting"):
        TrainSettings.from_flat(data=str(tmp_path), workdir="w", learning_rat=1e-3)
    # Each group validates its own fields; messages name the flag.
    with pytest.raises(TrainingError, match="hard_negative_max must be an integer >= 0"):
        s.replace(hard_negative_max=-1)
    with pytest.raises(TrainingError, match="optimizer must be one of"):
        s.replace(optimizer="rmsprop")


def test_the_scratch_recipe_is_flat_names(tmp_path):
    (tmp_path / "images").mkdir()  # --data must be a dataset folder (datasets.detect_layout)
    s = TrainSettings.from_flat(data=str(tmp_path), workdir="w", **recipe.scratch_recipe(300, 2))
    assert s.optimiser.optimizer == "adam" and s.mining_steps() == [100, 200]


def test_an_old_flat_config_json_resumes(tmp_path):
    (tmp_path / "images").mkdir()  # --data must be a dataset folder (datasets.detect_layout)
    # The settings key set of a config.json written by the flat TrainSettings
    # (before the recipe settings and the augmentation ranges existed).
    old = {"data": str(tmp_path), "workdir": str(tmp_path / "w"), "config": "tiny", "steps": 1000, "batch_size": 8,
           "learning_rate": 0.0001, "momentum": 0.9, "lambda_seg": 0.5, "gamma": 0.04, "synergistic": True,
           "seed": 0, "split": "train", "random_per_class": 64, "boundary": 32, "itc": 16, "augment": True,
           "tfrecords": None, "checkpoint_every": 100, "keep_checkpoints": 3, "log_every": 10,
           "hard_negative_at": 0, "hard_negative_candidates": 256, "hard_negative_threshold": 0.5,
           "hard_negative_max": 64, "max_seconds": None, "kernel_init": "he_normal", "num_parallel_calls": -1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"settings": old}))
    same = TrainSettings.from_flat(data=str(tmp_path), workdir=str(tmp_path / "w"), stream=False,
                                   hard_negative_source="patches", steps=2000)
    trainer._check_workdir_config(str(path), {"settings": same.flat()})
    for change, key in ((dict(augment_max_rotation_deg=90.0), "augment_max_rotation_deg"),
                        (dict(stream=True), "stream"), (dict(learning_rate=1e-3), "learning_rate")):
        with pytest.raises(TrainingError, match=key):
            trainer._check_workdir_config(str(path), {"settings": same.replace(**change).flat()})
    # Without augmentation on either side, its ranges do not matter.
    path.write_text(json.dumps({"settings": dict(old, augment=False)}))
    trainer._check_workdir_config(str(path), {"settings": same.replace(augment=False).flat()})


def test_cohort_settings_one_declaration():
    fv, names = _flags(CohortSettings)
    assert set(names) == {"seed", "patients", "nodes_per_patient", "slide_size", "mpp", "test_fraction", "centres",
                          "tile_px", "quality", "node_labels"}
    fv(["prog"])
    assert settings_lib.from_flags(CohortSettings, fv) == CohortSettings()
    fv(["prog", "--patients=2", "--nodes_per_patient=2", "--node_labels=itc,negative; negative,micro"])
    assert settings_lib.from_flags(CohortSettings, fv).node_labels == [["itc", "negative"], ["negative", "micro"]]
    assert CohortSettings().test_fraction == 0.25  # the cohort stage's and make_cohort's default
    from pfascannet import demo

    assert {s.test_fraction for s in demo.SIZES.values()} == {0.5}  # the demo's cohorts, as before
    with pytest.raises(CohortError, match="test_fraction"):
        CohortSettings(test_fraction=2.0)


def test_training_progress_line_has_step_losses_rate_and_eta():
    out = io.StringIO()
    report = trainer.progress_printer(stream=out)
    report(trainer.TrainProgress(3, 10, {"total": 0.5, "accuracy": 1.0}, 2.0, 12.5, first_step=2))
    report(trainer.TrainProgress(4, 10, {"total": 0.25, "accuracy": 1.0}, 3.0, 12.5, first_step=2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train: 3/10") and lines[1].startswith("train: 4/10")
    assert "total=0.2500" in lines[1] and "12.5 patches/s" in lines[1] and "ETA" in lines[1]
