"""Every stage's flags come from the fields of settings dataclasses: one declaration per setting.

A stage module keeps ``SETTINGS``, the dataclasses whose fields are its flags
(``settings.define_stage_flags``), and declares no flag by hand.  These tests
fail when a ``flags.DEFINE_*`` appears in the package outside settings.py, or
when a flag a stage defines is not a field of its ``SETTINGS`` or has another
default than that field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import os
import re
import sys

import pytest
from absl import flags

from pfascannet import cli
from pfascannet import settings as settings_lib

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pfascannet")
HAND_FLAG = re.compile(r"\bDEFINE_\w+\s*\(|\bmark_flags?_as_required\s*\(|\bmark_flag_as_required\s*\(")


def _python_files():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def test_no_flag_is_declared_by_hand():
    """Only settings.py calls absl's DEFINE_* (for the fields it is given)."""
    offenders = []
    for path in _python_files():
        if os.path.abspath(path) == os.path.join(PACKAGE, "settings.py"):
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if HAND_FLAG.search(line.split("#")[0]):
                    offenders.append(f"{os.path.relpath(path, PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "flags declared by hand (declare a settings field instead):\n" + "\n".join(offenders)


@contextlib.contextmanager
def _import_fresh(module_name: str, monkeypatch):
    """Imports a stage module with its flags defined in a new FlagValues (absl flags are global).

    Yields ``(module, flag_values)``; afterwards the module imported before, if any, is back.
    """
    fv = flags.FlagValues()
    monkeypatch.setattr(flags, "FLAGS", fv)
    short = module_name.rsplit(".", 1)[1]
    before = sys.modules.pop(module_name, None)
    package = importlib.import_module("pfascannet.stages")
    before_attr = getattr(package, short, None)
    try:
        yield importlib.import_module(module_name), fv
    finally:
        sys.modules.pop(module_name, None)
        if before is not None:
            sys.modules[module_name] = before
        if before_attr is not None:
            setattr(package, short, before_attr)
        elif hasattr(package, short):
            delattr(package, short)


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return tuple(value)
    return value


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_flag_is_a_field_with_its_default(stage, monkeypatch):
    with _import_fresh(f"pfascannet.stages.{cli.STAGES[stage][0]}", monkeypatch) as (module, fv):
        _check_stage_flags(stage, module, fv)


def _check_stage_flags(stage, module, fv):
    classes = getattr(module, "SETTINGS", None)
    assert classes and all(dataclasses.is_dataclass(c) for c in classes), f"{stage}: no SETTINGS dataclasses"
    leaves = {}
    for cls in classes:
        for leaf in settings_lib.leaves(cls):
            assert leaf.name not in leaves, f"{stage}: --{leaf.name} is a field of two SETTINGS classes"
            leaves[leaf.name] = leaf
    defined = {f.name: f for f in fv.get_key_flags_for_module(module.__name__)}
    assert defined, stage
    # Every flag the stage defines is a field of SETTINGS, with the field's default ...
    for name, flag in defined.items():
        assert name in leaves, f"{stage}: --{name} is no field of {[c.__name__ for c in classes]}"
        leaf = leaves[name]
        default = settings_lib._coerce(leaf, flag.default) if leaf.type is tuple else flag.default
        assert _plain(default) == _plain(leaf.default), f"{stage}: --{name} defaults to {flag.default!r}, " \
                                                        f"its field to {leaf.default!r}"
        if leaf.choices is not None:
            assert flag.parser.enum_values == [str(c) for c in leaf.choices], name
    # ... and every field meant as a flag is one.
    assert {n for n, leaf in leaves.items() if leaf.flag} == set(defined), stage
    # Nothing else was registered (a DEFINE_* by hand goes to the global FLAGS, caught above).
    assert set(fv) == set(defined), stage


def test_drifted_settings_are_declared_once():
    from pfascannet.inference import postprocess
    from pfascannet.inference.scan_settings import ScanSettings
    from pfascannet.model import paper
    from pfascannet.training.settings import PAPER_DEFAULTS, LossSettings, ModelSettings

    scan = {f.name: f for f in dataclasses.fields(ScanSettings)}
    post = {f.name: f for f in dataclasses.fields(postprocess.PostSettings)}
    for name in ("threshold", "heatmap"):  # one declaration (default, help, check), two holders
        assert dict(post[name].metadata) == dict(scan[name].metadata) and post[name].default == scan[name].default
    with pytest.raises(postprocess.PostprocessError, match=r"threshold must be a probability in \[0, 1\]"):
        postprocess.PostSettings(threshold=1.5)
    assert ScanSettings().batch == 1  # the scan command's, workflow.scan's and every benchmark's
    assert (PAPER_DEFAULTS["gamma"], PAPER_DEFAULTS["lambda_seg"]) == (paper.PAPER_GAMMA, paper.PAPER_LAMBDA)
    assert (LossSettings().gamma, LossSettings().lambda_seg) == (paper.PAPER_GAMMA, paper.PAPER_LAMBDA)
    from pfascannet.model.precision import PRECISIONS

    assert {f.name: f for f in dataclasses.fields(ModelSettings)}["precision"].metadata["choices"] == PRECISIONS


def test_checks_and_repeatable_and_required_flags():
    from pfascannet.inference.scan_settings import ScanError, ScanSettings

    @dataclasses.dataclass(frozen=True)
    class Command:
        out: str = settings_lib.setting(None, required=True, help="Output folder.")
        model: tuple[str, ...] = settings_lib.setting((), repeat=True, help="A model (repeatable).")
        seeds: tuple[int, ...] = settings_lib.setting((1, 2), help="Seeds.")
        port: int = settings_lib.setting(80, check=settings_lib.in_range(0, 65535), help="Port.")

        def __post_init__(self):
            settings_lib.check_fields(self)

    fv = flags.FlagValues()
    settings_lib.define_flags(Command, fv)
    with pytest.raises(flags.IllegalFlagValueError, match="out"):
        fv(["prog"])
    fv = flags.FlagValues()
    settings_lib.define_flags(Command, fv)
    fv(["prog", "--out=o", "--model=a", "--model=b,c", "--seeds=3,4"])
    assert settings_lib.from_flags(Command, fv) == Command(out="o", model=("a", "b,c"), seeds=(3, 4))
    fv = flags.FlagValues()
    settings_lib.define_flags(Command, fv)
    fv(["prog", "--out=o", "--seeds=3,x", "--port=70000"])
    with pytest.raises(settings_lib.SettingsError, match="seeds must be comma-separated integers"):
        settings_lib.from_flags(Command, fv)
    with pytest.raises(settings_lib.SettingsError, match="port must be an integer in 0..65535, got 70000"):
        settings_lib.from_flags(Command, fv, seeds=(1,))
    with pytest.raises(ScanError, match="batch must be an integer >= 1, got 0"):
        ScanSettings(batch=0)
    assert ScanSettings(tissue=lambda reader: None).tissue is not None  # code may pass a callable; the flag: a choice


def test_the_demo_options_are_its_settings_fields():
    """``pfascannet demo`` (argparse, no absl) takes its options from DemoSettings' fields too."""
    from pfascannet import demo  # noqa: PLC0415

    parser = cli._demo_parser()
    options = {}
    for a in parser._actions:
        options.setdefault(a.dest, a)
    options.pop("help")
    fields = {f.name: f for f in dataclasses.fields(demo.DemoSettings)}
    assert set(options) == set(fields)
    for name, f in fields.items():
        assert options[name].default == f.default, name
    built = settings_lib.from_arguments(demo.DemoSettings, parser.parse_args(["--fast", "--seed", "3"]))
    assert built == demo.DemoSettings(fast=True, seed=3) and built.size == "fast"
    assert settings_lib.from_arguments(demo.DemoSettings, parser.parse_args(["--nofast"])).size == "default"
    assert settings_lib.from_arguments(demo.DemoSettings, parser.parse_args([])) == demo.DemoSettings()
