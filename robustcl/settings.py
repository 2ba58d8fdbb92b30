"""Settings: frozen dataclasses whose fields carry their flag, help text and constraints.

The bottom of the package (it imports only `registry`). Each layer keeps its own settings beside the
code that consumes them (`data.DataConfig`, `attacks.AttackConfig`, `training.settings`,
`evaluation.settings`, ...), made of `option` fields and checked by `check_fields`; `robustcl.cli`
generates flags from the same fields. A field naming something registered (a dataset, a method, a
backbone, a threat model) holds that Registry as its `choices`, so the name is checked by asking the
registry from the layer that owns it: nothing here imports anything above it.
"""

import dataclasses
import math
import os


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting (as its flag)."""


def check(condition, flag, message):
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def check_name(registry, flag, value):
    """ConfigError naming --flag when `value` is not in `registry` (the one unknown-name message)."""
    if value not in registry:
        raise ConfigError(f"--{flag}: {registry.unknown_message(value)}")


def is_finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- fields that carry their flag and their constraints ------------------------------------------


def option(
    default,
    help_text,
    *,
    flag=None,
    choices=None,
    minimum=None,
    maximum=None,
    above=None,
    below=None,
    finite=False,
    exists=False,
):
    """A config field with what its flag needs and what `check_fields` checks.

    flag: the flag's name (default: the field's, with the caller's prefix); False: no flag of its
    own (the field is set from other flags). choices: the Registry of the allowed names (asked by
    check_fields; the layer that owns the registry imports it, never this module).
    minimum/maximum are inclusive, above/below exclusive bounds; finite: no NaN or infinity;
    exists: a path that must exist (None or "": not given).
    """
    metadata = {
        "help": help_text,
        "flag": flag,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "finite": finite,
        "exists": exists,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _metadata(field):
    """A field's option metadata; a field made without `option` (a plain dataclass field of a
    user's Params) has no constraints and a flag of its name."""
    return {**_PLAIN_FIELD, **field.metadata}


_PLAIN_FIELD = {
    "help": "",
    "flag": None,
    "choices": None,
    "minimum": None,
    "maximum": None,
    "above": None,
    "below": None,
    "finite": False,
    "exists": False,
}


def choices_of(field):
    """The Registry of a field's names, or None."""
    return field.metadata.get("choices")


def flag_name(field, prefix=""):
    return field.metadata.get("flag") or prefix + field.name


def _bounds_message(meta, value):
    low = (
        ("[", meta["minimum"])
        if meta["minimum"] is not None
        else (("(", meta["above"]) if meta["above"] is not None else None)
    )
    high = (
        (meta["maximum"], "]")
        if meta["maximum"] is not None
        else ((meta["below"], ")") if meta["below"] is not None else None)
    )
    if low and high:
        return f"must be in {low[0]}{low[1]}, {high[0]}{high[1]}, got {value}"
    finite = "a finite number " if meta["finite"] else ""
    if low:
        return f"must be {finite}{'>=' if low[0] == '[' else '>'} {low[1]}, got {value}"
    if high:
        return f"must be {finite}{'<=' if high[1] == ']' else '<'} {high[0]}, got {value}"
    return f"must be a finite number, got {value}"


def _within(meta, value):
    if meta["finite"] and not is_finite(value):
        return False
    return (
        (meta["minimum"] is None or value >= meta["minimum"])
        and (meta["maximum"] is None or value <= meta["maximum"])
        and (meta["above"] is None or value > meta["above"])
        and (meta["below"] is None or value < meta["below"])
    )


def check_fields(obj, prefix="", flags=None):
    """ConfigError naming the flag of the first field of `obj` (a dataclass of `option` fields) that
    breaks its constraints. `flags` renames fields' flags ({field: flag}) for a second use of a
    class (the validation attack's)."""
    for field in dataclasses.fields(obj):
        meta = _metadata(field)
        flag = (flags or {}).get(field.name) or flag_name(field, prefix)
        value = getattr(obj, field.name)
        registry = choices_of(field)
        if registry is not None:
            check_name(registry, flag, value)
        bounded = any(meta[k] is not None for k in ("minimum", "maximum", "above", "below"))
        if (
            value is not None
            and (bounded or meta["finite"])
            and not (isinstance(value, (int, float)) and _within(meta, value))
        ):
            raise ConfigError(f"--{flag}: {_bounds_message(meta, value)}")
        if meta["exists"] and value and not os.path.exists(value):
            raise ConfigError(f"--{flag}: {value} does not exist")
