"""One declaration per setting: absl flags generated from (nested) frozen dataclasses.

A run's settings are a frozen dataclass whose fields are settings
(``setting(...)``) or nested groups of them (``group(...)``).  Each field
declares, in one place, its default and type (the field's own), and in
``dataclasses.field(metadata=...)`` its help text, flag name, choices,
whether a resumed run must match it, and what runs written before it existed
did (its legacy value).  From that one declaration this module

- lists the settings as flat ``Leaf`` entries (``leaves``), each with the
  flat name that is its absl flag and its key in a run's flat config view;
- defines the absl flags (``define_flags``) and builds the dataclass back
  from the parsed flags (``from_flags``);
- converts between nested settings and flat names (``flatten`` /
  ``unflatten``).

A group's leaves take the flat name ``prefix + field name`` (``flag=``
overrides it).  An optional group (``group(..., switch="augment")``) is None
when off; its switch is a boolean flag (``--augment`` / ``--noaugment``).
A group may name an ``active`` leaf whose false value switches the group off
(``hard_negative_at=0``); a resumed run ignores the group's other settings
when it is off on both sides.

Field types understood: ``int``, ``float``, ``str``, ``bool``, ``enum.Enum``
subclasses, ``tuple[float, ...]`` / ``tuple[int, ...]`` / ``tuple[str, ...]``
(a comma-separated flag, or with ``repeat=True`` a repeatable one) and
``Optional[...]`` of those; a field of another type (``object``) with
``choices`` is a string flag.  The library never reads flags: only absl
mains call ``define_flags`` / ``from_flags``.

A setting's ``check`` is its validation, declared beside its default
(``at_least(1)``, ``probability``, ...): a dataclass's ``__post_init__``
runs its fields' checks with ``check_fields(self, ErrorClass)``, so the
library and the flags refuse a value with the same message.  A field
declared once may be held by two dataclasses (``same_as``).  Every stage in
``pfascannet/stages/`` defines all its flags this way (``define_stage_flags``):
the library's settings dataclass it builds, plus a small dataclass of its own
flags (paths and such); none calls ``flags.DEFINE_*`` itself
(tests/test_stage_flags.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Optional

from pfascannet.errors import PfaError

MISSING = dataclasses.MISSING
NO_LEGACY = type("NoLegacy", (), {"__repr__": lambda self: "NO_LEGACY"})()
"""``legacy=`` default: a run that lacks the setting has no known value (it cannot resume with this code)."""
LEGACY_IS_DEFAULT = "<the field's default>"
"""``legacy=`` value meaning: runs written before this setting existed used its default."""


class SettingsError(PfaError, ValueError):
    """A settings declaration or value this module cannot handle."""


def setting(default: Any = MISSING, *, help: str, flag: Optional[str | bool] = None,  # noqa: A002
            choices: Optional[Iterable] = None, must_match: Optional[bool] = None,
            legacy: Any = NO_LEGACY, check: Optional[Callable[[Any], Optional[str]]] = None,
            required: bool = False, repeat: bool = False) -> Any:
    """A dataclass field that is one setting.

    Args:
      default: the default (omit for a required setting; its flag defaults to None).
      help: the flag's help text.
      flag: the flat / flag name (default: the group's prefix + the field name);
        False: no flag (set by the caller, e.g. from a flag in other units).
      choices: allowed values of a ``str`` setting (an enum flag).
      must_match: a resumed run must have the same value (None: the group's rule).
      legacy: the value runs written before this setting existed used
        (``LEGACY_IS_DEFAULT``: its default).
      check: the setting's validation: ``value -> None`` (fine) or what is wrong
        (``"must be an integer >= 1"``); run by ``check_fields``.
      required: absl refuses a command line without the flag.
      repeat: a ``tuple[str, ...]`` setting is a repeatable flag
        (``--ensemble a --ensemble b``) rather than a comma-separated one.
    """
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None,
            "must_match": must_match, "legacy": legacy, "check": check, "required": required, "repeat": repeat}
    return dataclasses.field(default=default, metadata=meta)


def fixed(default: Any, *, help: str, check: Optional[Callable[[Any], Optional[str]]] = None) -> Any:  # noqa: A002
    """A dataclass field that is not a setting of a run: no flag, not in the flat view; code may pass another value."""
    return dataclasses.field(default=default, metadata={"help": help, "fixed": True, "check": check})


def group(cls: type, *, help: str = "", prefix: str = "", switch: Optional[str] = None,  # noqa: A002
          default_on: bool = True, active: Optional[str] = None, must_match: Optional[bool] = None,
          legacy: Any = NO_LEGACY) -> Any:
    """A dataclass field holding a nested settings dataclass ``cls``.

    Args:
      cls: the nested (frozen) dataclass; its fields may carry ``setting``
        metadata (else their help is the field name).
      help: help of the switch flag.
      prefix: prepended to the flat names of the group's settings.
      switch: the group is optional (None when off) and this boolean flag turns it on.
      default_on: with ``switch``: the default is ``cls()`` (else None).
      active: flat name of the group's leaf whose false value means the group is off.
      must_match, legacy: defaults for the group's settings that do not set their own.
    """
    meta = {"group": cls, "help": help, "prefix": prefix, "switch": switch, "active": active,
            "must_match": must_match, "legacy": legacy}
    if switch is not None and not default_on:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default_factory=cls, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting as a flag: flat name, where it lives, type, default and rules.

    Attributes:
      name: flat name (the absl flag, the key of the flat view).
      path: attribute names from the root dataclass down to the field.
      type: ``int``, ``float``, ``str``, ``bool``, an Enum class, or ``tuple``.
      item_type: ``(element type, length or None)`` of a ``tuple`` setting.
      optional: None is allowed.
      default: the default (None when required).
      required: the setting has no default.
      help: help text.
      choices: allowed values of a ``str`` setting.
      flag: False when the setting has no flag of its own.
      must_match: a resumed run must have the same value.
      legacy: value of runs written before the setting existed (``NO_LEGACY``: none).
      switch: flat name of the switch of the optional group it is in (the switch itself: its own name).
      active: flat name of the leaf that switches its group off (None: always on).
      check: the setting's validation (``setting(check=...)``), or None.
      flag_required: absl refuses a command line without the flag.
      repeat: a repeatable flag (``tuple[str, ...]`` settings).
    """

    name: str
    path: tuple
    type: Any
    item_type: Any = None
    optional: bool = False
    default: Any = None
    required: bool = False
    help: str = ""
    choices: Optional[tuple] = None
    flag: bool = True
    must_match: bool = False
    legacy: Any = NO_LEGACY
    switch: Optional[str] = None
    active: Optional[str] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    flag_required: bool = False
    repeat: bool = False

    @property
    def legacy_value(self) -> Any:
        """What an old run that lacks this setting used (None: unknown)."""
        if self.legacy is LEGACY_IS_DEFAULT:
            return self.default
        return None if self.legacy is NO_LEGACY else self.legacy


def _base_type(hint) -> tuple[Any, Any, bool]:
    """``(type, tuple item type, optional)`` of a field's type hint."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise SettingsError(f"unsupported settings type {hint!r}")
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        items = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if len(items) != 1 or not items <= {int, float, str}:
            raise SettingsError(f"unsupported settings type {hint!r}: tuples of int, float or str only")
        args = typing.get_args(hint)
        return tuple, (items.pop(), None if Ellipsis in args else len(args)), optional
    if hint in (int, float, str, bool) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return hint, None, optional
    if dataclasses.is_dataclass(hint):
        return hint, None, optional
    raise SettingsError(f"unsupported settings type {hint!r}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def leaves(cls: type, _prefix: str = "", _path: tuple = (), _inherit: Optional[dict] = None) -> list[Leaf]:
    """Every setting of ``cls`` (groups expanded, switches included) in declaration order."""
    inherit = _inherit or {"must_match": False, "legacy": NO_LEGACY, "switch": None, "active": None}
    hints = typing.get_type_hints(cls)
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("fixed"):
            continue
        meta = dict(f.metadata)
        path = _path + (f.name,)
        try:
            base, item, optional = _base_type(hints[f.name])
        except SettingsError:
            if meta.get("choices") is not None:
                base, item, optional = str, None, False  # a string flag; code may set other values (a callable)
            elif meta.get("flag") is not False:
                raise
            else:
                base, item, optional = object, None, True  # set in code only (no flag)
        if dataclasses.is_dataclass(base):
            sub = meta.get("group", base)
            prefix = _prefix + meta.get("prefix", "")
            child = dict(inherit)
            if meta.get("must_match") is not None:
                child["must_match"] = meta["must_match"]
            if meta.get("legacy", NO_LEGACY) is not NO_LEGACY:
                child["legacy"] = meta["legacy"]
            switch = meta.get("switch")
            if switch:
                out.append(Leaf(switch, path, bool, default=_field_default(f) is not None,
                                help=meta.get("help", ""), must_match=child["must_match"], switch=switch,
                                active=inherit["active"]))
                child["switch"] = switch
                child["active"] = switch
            elif optional:
                raise SettingsError(f"{cls.__name__}.{f.name}: an optional group needs a switch flag")
            if meta.get("active"):
                child["active"] = meta["active"]
            out.extend(leaves(sub, prefix, path, child))
            continue
        flag = meta.get("flag")
        name = flag if isinstance(flag, str) else _prefix + f.name
        must_match = meta.get("must_match")
        legacy = meta.get("legacy", NO_LEGACY)
        out.append(Leaf(
            name, path, base, item_type=item, optional=optional,
            default=None if _field_default(f) is MISSING else _field_default(f), required=_field_default(f) is MISSING,
            help=meta.get("help") or f.name.replace("_", " "), choices=meta.get("choices"), flag=flag is not False,
            must_match=inherit["must_match"] if must_match is None else must_match,
            legacy=inherit["legacy"] if legacy is NO_LEGACY else legacy,
            switch=inherit["switch"], active=inherit["active"], check=meta.get("check"),
            flag_required=bool(meta.get("required")), repeat=bool(meta.get("repeat")),
        ))
    names = [leaf.name for leaf in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SettingsError(f"{cls.__name__}: flat names used twice: {dupes}")
    return out


# --------------------------------------------------------------------------- flat <-> nested


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def flatten(obj: Any) -> dict:
    """``{flat name: value}`` of a settings dataclass (an off group's settings: their defaults)."""
    out = {}
    for leaf in leaves(type(obj)):
        node, off = obj, False
        for attr in leaf.path:
            if node is None:  # inside an off group
                off = True
                break
            node = getattr(node, attr)
        if leaf.switch == leaf.name:
            out[leaf.name] = node is not None
        elif off:
            out[leaf.name] = leaf.default
        else:
            out[leaf.name] = node
    return out


def _coerce(leaf: Leaf, value: Any) -> Any:
    if value is None or leaf.type is not tuple:
        return value
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    item, length = leaf.item_type
    try:
        out = tuple(item(v) for v in value)
    except (TypeError, ValueError):
        out = None
    if out is None or (length is not None and len(out) != length):
        what = f"{length} " if length else ""
        kind = {int: "integers", float: "numbers"}.get(item, "values")
        raise SettingsError(f"{leaf.name} must be {what}comma-separated {kind}, got {value!r}")
    return out


def unflatten(cls: type, flat: Mapping[str, Any]) -> Any:
    """Builds ``cls`` from flat names; a name left out takes its default.

    Raises:
      TypeError: a name that is no setting of ``cls`` (as a dataclass does for
        an unknown keyword), or a required one missing.
    """
    all_leaves = leaves(cls)
    unknown = sorted(set(flat) - {leaf.name for leaf in all_leaves})
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting(s) {unknown}")
    by_path = {leaf.path: leaf for leaf in all_leaves}
    return _build(cls, (), flat, by_path)


def _build(cls: type, path: tuple, flat: Mapping[str, Any], by_path: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("fixed"):
            continue
        here = path + (f.name,)
        leaf = by_path.get(here)
        base = leaf.type if leaf is not None and not leaf.switch == leaf.name else _base_type(hints[f.name])[0]
        if dataclasses.is_dataclass(base):
            switch = by_path.get(here)  # only an optional group has a leaf at its own path
            if switch is not None and switch.name in flat:
                if not flat[switch.name]:
                    kwargs[f.name] = None
                    continue
            elif switch is not None and not switch.default:
                if not any(leaf_path[: len(here)] == here and leaf.name in flat
                           for leaf_path, leaf in by_path.items() if leaf_path != here):
                    continue  # off by default and nothing of it given
            kwargs[f.name] = _build(f.metadata.get("group", base), here, flat, by_path)
            continue
        leaf = by_path[here]
        if leaf.name in flat:
            kwargs[f.name] = _coerce(leaf, flat[leaf.name])
    return cls(**kwargs)


# --------------------------------------------------------------------------- absl flags


def define_flags(cls: type, flag_values=None, skip: Iterable[str] = (), module_name: Optional[str] = None) -> list[str]:
    """Defines one absl flag per setting of ``cls`` (except ``flag=False`` ones and ``skip``); returns their names.

    The flags are key flags of ``module_name`` (default: the calling module),
    so that module's ``--help`` lists them as if it had defined them itself.
    """
    from absl import flags  # noqa: PLC0415  (absl only where flags are wanted)

    fv = flag_values if flag_values is not None else flags.FLAGS
    module_name = module_name or sys._getframe(1).f_globals.get("__name__", "__main__")
    skip = set(skip)
    names = []
    for leaf in leaves(cls):
        if not leaf.flag or leaf.name in skip:
            continue
        default = _plain(leaf.default)
        kw = {"flag_values": fv}
        if leaf.type is bool:
            flags.DEFINE_boolean(leaf.name, default, leaf.help, **kw)
        elif leaf.choices is not None:
            flags.DEFINE_enum(leaf.name, default, [str(c) for c in leaf.choices], leaf.help, **kw)
        elif isinstance(leaf.type, type) and issubclass(leaf.type, enum.Enum):
            flags.DEFINE_enum(leaf.name, default, [str(m.value) for m in leaf.type], leaf.help, **kw)
        elif leaf.type is int:
            flags.DEFINE_integer(leaf.name, default, leaf.help, **kw)
        elif leaf.type is float:
            flags.DEFINE_float(leaf.name, default, leaf.help, **kw)
        elif leaf.type is str:
            flags.DEFINE_string(leaf.name, default, leaf.help, **kw)
        elif leaf.type is tuple:
            items = None if default is None else [f"{v:g}" if isinstance(v, float) else str(v) for v in default]
            if leaf.repeat:
                flags.DEFINE_multi_string(leaf.name, items, leaf.help, **kw)
            else:
                flags.DEFINE_list(leaf.name, items, leaf.help, **kw)
        else:  # _base_type admits nothing else
            raise SettingsError(f"no flag type for {leaf.name}")
        if leaf.flag_required:
            flags.mark_flag_as_required(leaf.name, flag_values=fv)
        fv.register_key_flag_for_module(module_name, fv[leaf.name])
        names.append(leaf.name)
    return names


def define_stage_flags(classes: Iterable[type], flag_values=None) -> list[str]:
    """A stage's flags: one per setting of each of ``classes`` (``define_flags``), key flags of the calling module.

    A stage module keeps the tuple it passes as ``SETTINGS``; tests/test_stage_flags.py
    checks every flag it defines against those classes' fields.
    """
    module_name = sys._getframe(1).f_globals.get("__name__", "__main__")
    names = []
    for cls in classes:
        names += define_flags(cls, flag_values, module_name=module_name)
    return names


def flag_values_dict(cls: type, flag_values=None, skip: Iterable[str] = ()) -> dict:
    """``{flat name: parsed flag value}`` of the flags ``define_flags(cls)`` defined."""
    from absl import flags  # noqa: PLC0415

    fv = flag_values if flag_values is not None else flags.FLAGS
    skip = set(skip)
    out = {}
    for leaf in leaves(cls):
        if not leaf.flag or leaf.name in skip:
            continue
        value = fv[leaf.name].value
        if isinstance(leaf.type, type) and issubclass(leaf.type, enum.Enum) and value is not None:
            value = leaf.type(value)
        out[leaf.name] = _coerce(leaf, value)
    return out


def from_flags(cls: type, flag_values=None, **overrides) -> Any:
    """``cls`` built from its parsed flags, with ``overrides`` (flat names) on top."""
    values = flag_values_dict(cls, flag_values, skip=overrides)
    values.update(overrides)
    return unflatten(cls, values)


def add_arguments(parser, cls: type) -> list[str]:
    """The argparse twin of ``define_flags``, for the builtin commands that avoid absl (``pfascannet demo``).

    One option per flag setting of ``cls``: a bool gives ``--name`` and ``--noname``
    (as absl), others ``--name VALUE`` of the field's type (choices where declared).
    Returns the names defined; ``from_arguments`` builds ``cls`` back.
    """
    names = []
    for leaf in leaves(cls):
        if not leaf.flag:
            continue
        if leaf.type is bool:
            parser.add_argument(f"--{leaf.name}", dest=leaf.name, action="store_true", default=leaf.default,
                                help=leaf.help)
            parser.add_argument(f"--no{leaf.name}", dest=leaf.name, action="store_false", default=leaf.default,
                                help=argparse.SUPPRESS)
        elif leaf.type in (int, float, str):
            parser.add_argument(f"--{leaf.name}", dest=leaf.name, type=leaf.type, default=leaf.default,
                                choices=leaf.choices, help=leaf.help)
        else:
            raise SettingsError(f"no command-line option type for {leaf.name} ({leaf.type!r})")
        names.append(leaf.name)
    return names


def from_arguments(cls: type, namespace) -> Any:
    """``cls`` built from an argparse namespace of ``add_arguments(parser, cls)``."""
    return unflatten(cls, {leaf.name: getattr(namespace, leaf.name) for leaf in leaves(cls) if leaf.flag})


# --------------------------------------------------------------------------- checks


def same_as(cls: type, name: str) -> Any:
    """A field declared like ``cls``'s field ``name`` (default, help, check, flag...): one declaration, two holders."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=dict(f.metadata))
    return dataclasses.field(default=f.default, metadata=dict(f.metadata))


def check_fields(obj: Any, error: type = SettingsError) -> None:
    """Runs the ``check`` of each field of ``obj`` (not of its groups: they check themselves); raises ``error``.

    The message is ``<field> <what is wrong>, got <value>``.
    """
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(obj, f.name)
        problem = check(value)
        if problem:
            raise error(f"{f.name} {problem}, got {value!r}")


def _is_int(value: Any) -> bool:
    import numbers  # noqa: PLC0415

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # NaN fails every comparison, so range checks written as `lo <= x <= hi` reject it.
    import numbers  # noqa: PLC0415

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def at_least(minimum: int) -> Callable[[Any], Optional[str]]:
    """Check: an integer >= ``minimum``."""
    def check(value):
        return None if _is_int(value) and value >= minimum else f"must be an integer >= {minimum}"
    return check


def in_range(lo: int, hi: int) -> Callable[[Any], Optional[str]]:
    """Check: an integer in ``lo..hi``."""
    def check(value):
        return None if _is_int(value) and lo <= value <= hi else f"must be an integer in {lo}..{hi}"
    return check


def probability(value: Any) -> Optional[str]:
    """Check: a number in [0, 1]."""
    return None if _is_number(value) and 0.0 <= value <= 1.0 else "must be a probability in [0, 1]"


def positive(value: Any) -> Optional[str]:
    """Check: a finite number > 0."""
    import math  # noqa: PLC0415

    return None if _is_number(value) and math.isfinite(value) and value > 0 else "must be a number > 0"


def non_negative(value: Any) -> Optional[str]:
    """Check: a finite number >= 0."""
    import math  # noqa: PLC0415

    return None if _is_number(value) and math.isfinite(value) and value >= 0 else "must be a number >= 0"


def subset_of(choices: Iterable[str]) -> Callable[[Any], Optional[str]]:
    """Check: a non-empty collection of ``choices``."""
    choices = tuple(choices)

    def check(value):
        ok = value and all(v in choices for v in value)
        return None if ok else f"must be a non-empty list of {', '.join(choices)}"
    return check


def optional(check: Callable[[Any], Optional[str]]) -> Callable[[Any], Optional[str]]:
    """Check: None, or what ``check`` accepts."""
    def wrapped(value):
        return None if value is None else check(value)
    return wrapped
