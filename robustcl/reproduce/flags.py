"""The grid's flags (bench/reproduce.py), generated from ReproduceConfig by robustcl.cli: the grid
sits above the CLI, as it drives the scripts' commands."""

from absl import flags

from robustcl.cli.flags import FLAGS, config_from_field_flags, define_config_flags
from robustcl.reproduce.settings import ReproCell, ReproduceConfig
from robustcl.settings import ConfigError


def define_reproduce_flags(flag_values=FLAGS):
    flags.DEFINE_multi_string(
        "cell",
        [],
        "A cell of the grid: 'NAME METHOD_FLAGFILE [--flag=value ...]' (repeat the flag, one cell each).",
        flag_values=flag_values,
    )
    define_config_flags(ReproduceConfig, flag_values)


def _repro_cell(spec):
    parts = spec.split()
    if len(parts) < 2:
        raise ConfigError(f"--cell: expected 'NAME METHOD_FLAGFILE [--flag=value ...]', got {spec!r}")
    return ReproCell(parts[0], parts[1], tuple(parts[2:]))


def reproduce_config_from_flags(flag_values=FLAGS):
    cells = tuple(_repro_cell(spec) for spec in flag_values.cell)
    return config_from_field_flags(ReproduceConfig, flag_values, cells=cells).validate()
