"""The only module that defines or reads absl flags.

Every flag is generated from a field of the frozen config it fills (`robustcl.settings.option`: its
name, help, type, bounds and registry of names), so a setting is added in one place. `define_*`
define a script's flags; `*_from_flags` turn the parsed flags into its validated config, failing
with a message that names the flag before any work is done. Method hyperparameters are flags
`--<method>_<param>`, generated from each method's Params the same way. A flagfile may include
another with a `--flagfile=...` line (absl resolves nested flagfiles); later lines override earlier.
"""

import dataclasses
import fractions
import os
import sys
import typing

from absl import app, flags

from robustcl import registry
from robustcl.attacks.settings import AttackConfig
from robustcl.data.settings import DataConfig
from robustcl.evaluation.settings import EvaluationConfig
from robustcl.methods.settings import MethodConfig
from robustcl.models.settings import ModelConfig
from robustcl.serving.settings import ExportConfig, ModelServerConfig, ServeTestConfig
from robustcl.settings import ConfigError, check_name, choices_of, flag_name
from robustcl.training.settings import ExperimentConfig, OptimizerConfig, ProjectorConfig, RunConfig
from robustcl import data, hardware, methods
from robustcl.data import DATASETS
from robustcl.serving import servables
import tensorflow as tf

FLAGS = flags.FLAGS


class FractionParser(flags.FloatParser):
    """Floats that may be written as fractions, e.g. --eps=8/255."""

    def convert(self, argument):
        if isinstance(argument, str) and "/" in argument:
            try:
                return float(fractions.Fraction(argument.strip()))
            except (ValueError, ZeroDivisionError) as error:
                raise ValueError(f"not a number or fraction: {argument!r}") from error
        return super().convert(argument)

    def flag_type(self):
        return "float or fraction"


def _define_fraction(name, default, help_text, flag_values):
    flags.DEFINE(FractionParser(), name, default, help_text, flag_values, flags.ArgumentSerializer())


def _method_param_flags():
    """(flag name, method name, field) for every hyperparameter of every registered method."""
    for method_name in methods.METHODS.names():
        params_class = methods.get(method_name).Params
        for field in dataclasses.fields(params_class):
            yield f"{method_name}_{field.name}", method_name, field


def _choices_help(field):
    registry = choices_of(field)
    if registry is None:
        return ""
    entries = [(name, getattr(registry.get(name), "about", None)) for name in registry.names()]
    if all(about for _, about in entries):
        return " " + "; ".join(f"{name}: {about}" for name, about in entries) + "."
    return f" One of: {', '.join(name for name, _ in entries)}."


_FIELD_DEFAULT = object()


def define_field_flag(field, flag_values, name=None, help_suffix="", default=_FIELD_DEFAULT, help_text=None):
    """Defines the flag of a config field (robustcl.settings.option): its type from the field's
    default, its help from the metadata (or `help_text`), the choices from the field's registry."""
    name = name or flag_name(field)
    help_text = (help_text or field.metadata.get("help", field.name)) + help_suffix
    choices = _choices_help(field)
    if choices:
        help_text = help_text.rstrip(".") + "." + choices
    if default is _FIELD_DEFAULT:
        default = field.default
    kind = _value_type(field)
    if kind is bool:
        flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif kind is int:
        flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif kind is float:
        _define_fraction(name, default, help_text, flag_values)
    elif kind is tuple:
        flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
    else:
        flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def _value_type(field):
    """bool, int, float, tuple or str: a field's type, Optional[...] unwrapped (a string annotation,
    from `from __future__ import annotations`, is read from the default's type)."""
    kind = field.type
    if isinstance(kind, str):
        return type(field.default) if field.default is not None else str
    if typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return tuple if typing.get_origin(kind) is tuple else kind


def _define_data_flags(defaults, flag_values):
    """Which data and where, shared with training: DataConfig's fields, with `defaults`' values
    (an evaluation's dataset defaults to the model's own)."""
    fields = DataConfig.__dataclass_fields__
    define_field_flag(
        fields["dataset"], flag_values, default=defaults.dataset or None, help_suffix=" Default: the model's own."
    )
    for name in ("data_dir", "download", "image_size"):
        define_field_flag(fields[name], flag_values, default=getattr(defaults, name))


def _flag_fields(config_class, skip=()):
    return [
        f
        for f in dataclasses.fields(config_class)
        if "help" in f.metadata and f.metadata["flag"] is not False and f.name not in skip
    ]


def define_config_flags(config_class, flag_values, skip=()):
    """A flag for every field of a config dataclass (but `skip`, which the caller defines)."""
    for field in _flag_fields(config_class, skip):
        define_field_flag(field, flag_values)


def _field_value(field, value, flag):
    if _value_type(field) is tuple:
        args = typing.get_args(field.type)
        return _int_list(flag, value) if args and args[0] is int else tuple(value)
    if field.type is str and value is None:
        return ""
    return value


def config_from_field_flags(config_class, flag_values, **given):
    """A config dataclass from its fields' flags; `given` sets fields the flags do not."""
    values = {
        field.name: _field_value(field, flag_values[flag_name(field)].value, flag_name(field))
        for field in _flag_fields(config_class, skip=given)
    }
    return config_class(**values, **given)


def config_or_exit(argv, from_flags):
    """What `from_flags` makes of the parsed flags: every script's first step in `main(argv)`. A
    stray argument is a usage error; a bad value ends the program with the message naming its flag."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        return from_flags()
    except ConfigError as error:
        sys.exit(f"error: {error}")


EXTRA_MODULES = "extra_modules"


def import_extra_modules(argv, flag_values=FLAGS):
    """Imports the modules --extra_modules names on the command line or in its flagfiles, before
    the flags are defined, so their methods' and backbones' flags and names exist (as tf-models
    imports experiment modules). Returns the names."""
    names = []
    for arg in flag_values.read_flags_from_files(list(argv[1:]), force_gnu=False):
        if arg.startswith(f"--{EXTRA_MODULES}="):
            names += [n.strip() for n in arg.split("=", 1)[1].split(",") if n.strip()]
    try:
        registry.import_modules(names, EXTRA_MODULES)
    except registry.ModuleImportError as error:
        raise ConfigError(str(error)) from None
    return names


# Configs whose every field is a flag of the field's name (the others: see define_train_flags).
_TRAIN_CONFIGS = (DataConfig, ModelConfig, OptimizerConfig, ProjectorConfig)


def define_train_flags(flag_values=FLAGS):
    """Every training flag: one per config field (robustcl.settings.option), then one per method
    hyperparameter (--<method>_<field>). Defined by hand here: only flags whose value is resolved
    before a config holds it (--precision, --jit_compile: "auto") and the validation attack's."""
    for config_class in _TRAIN_CONFIGS:
        define_config_flags(config_class, flag_values)
    define_config_flags(MethodConfig, flag_values)
    define_config_flags(AttackConfig, flag_values)
    run_fields = RunConfig.__dataclass_fields__
    define_config_flags(RunConfig, flag_values, skip=("precision", "jit_compile"))
    flags.DEFINE_string(
        "precision",
        "auto",
        run_fields["precision"].metadata["help"] + _choices_help(run_fields["precision"]),
        flag_values=flag_values,
    )
    flags.DEFINE_string("jit_compile", "auto", run_fields["jit_compile"].metadata["help"], flag_values=flag_values)
    attack_fields = AttackConfig.__dataclass_fields__
    for field_name, help_text in (
        ("step_size", "Validation PGD step size (model selection)."),
        ("steps", "Validation PGD steps (model selection)."),
    ):
        define_field_flag(
            attack_fields[field_name],
            flag_values,
            name=AttackConfig.VALIDATION_FLAGS[field_name],
            help_text=help_text,
        )
    for param_flag, method_name, field in _method_param_flags():
        define_field_flag(field, flag_values, name=param_flag, help_suffix=f" ({method_name})")


def _int_list(flag, values):
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(f"--{flag}: expected whole numbers, got {','.join(values)}") from None


def _resolve_jit_compile(value):
    value = str(value).lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    if value != "auto":
        raise ConfigError(f"--jit_compile: expected true, false or auto, got {value!r}")
    return bool(tf.config.list_physical_devices("GPU"))


def _resolve_precision(value):
    """--precision, with auto resolved by the hardware (robustcl.hardware)."""
    if value == "auto":
        return hardware.auto_precision(hardware.detect())
    return value


def config_from_flags(flag_values=FLAGS):
    """Parsed flags -> validated ExperimentConfig. Raises ConfigError naming the offending flag."""
    f = flag_values
    data_config = config_from_field_flags(DataConfig, f)
    data_config.validate()  # the dataset's name, before its spec is read
    try:
        data.image_size_of(data.dataset_spec(f.dataset), f.image_size)
    except ValueError as error:
        raise ConfigError(f"--image_size: {error}") from None
    method = config_from_field_flags(MethodConfig, f, params=None)
    method.validate()
    method_class = methods.get(method.name)
    params = method_class.Params(
        **{
            field.name: f[param_flag].value
            for param_flag, method_name, field in _method_param_flags()
            if method_name == method.name
        }
    )
    methods.check_params(method.name, params)  # raises ConfigError naming --<method>_<param>
    # The head the method declares, unless the flags say otherwise.
    head = {
        name: f[name].value if f[name].present or not getattr(method_class, name) else getattr(method_class, name)
        for name in ("embedding_dim", "embedding_head")
    }
    train_attack = config_from_field_flags(AttackConfig, f)
    val = AttackConfig.VALIDATION_FLAGS
    config = ExperimentConfig(
        data=data_config,
        model=config_from_field_flags(ModelConfig, f, **head),
        method=MethodConfig(name=method.name, params=params),
        train_attack=train_attack,
        val_attack=dataclasses.replace(
            train_attack,
            name="pgd",
            step_size=f[val["step_size"]].value,
            steps=f[val["steps"]].value,
            random_start=True,
        ),
        optimizer=config_from_field_flags(OptimizerConfig, f),
        run=config_from_field_flags(
            RunConfig, f, precision=_resolve_precision(f.precision), jit_compile=_resolve_jit_compile(f.jit_compile)
        ),
        projector=config_from_field_flags(ProjectorConfig, f),
    )
    return config.validate()


def define_evaluate_flags(flag_values=FLAGS):
    """One flag per EvaluationConfig field, and the data flags training has."""
    define_config_flags(EvaluationConfig, flag_values)
    _define_data_flags(EvaluationConfig(), flag_values)


def evaluation_config_from_flags(flag_values=FLAGS):
    f = flag_values
    if f.model_dir and not os.path.isdir(f.model_dir):
        raise ConfigError(f"--model_dir: {f.model_dir} is not a directory")
    if f.saved_model and not os.path.isfile(os.path.join(f.saved_model, "saved_model.pb")):
        raise ConfigError(f"--saved_model: no saved_model.pb in {f.saved_model}")
    if f.keras_model and not os.path.isfile(f.keras_model):
        raise ConfigError(f"--keras_model: {f.keras_model} is not a file")
    if f.dataset is not None:
        check_name(DATASETS, "dataset", f.dataset)
    return config_from_field_flags(
        EvaluationConfig,
        f,
        dataset=f.dataset or "",
        image_size=f.image_size,
        data_dir=f.data_dir,
        download=f.download,
    ).validate()


def define_export_flags(flag_values=FLAGS):
    define_config_flags(ExportConfig, flag_values)


def export_args_from_flags(flag_values=FLAGS):
    """Validated export arguments as a dict (flags are read nowhere else)."""
    return dataclasses.asdict(config_from_field_flags(ExportConfig, flag_values).validate())


def define_model_server_flags(flag_values=FLAGS):
    define_config_flags(ModelServerConfig, flag_values)


def model_server_args_from_flags(flag_values=FLAGS):
    """The server's settings, checked: the models as servables.ModelConfig entries."""

    config = config_from_field_flags(ModelServerConfig, flag_values).validate()
    if config.model_config_file:
        try:
            models = servables.parse_model_config_file(config.model_config_file)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    else:
        models = [servables.ModelConfig(config.model_name, config.model_base_path)]
    for model in models:
        if not os.path.isdir(model.base_path):
            raise ConfigError(f"model {model.name}: base path {model.base_path} is not a directory")
    return {
        "models": models,
        "grpc_port": config.port,
        "rest_port": config.rest_api_port,
        "host": config.host,
        "poll_wait_seconds": config.file_system_poll_wait_seconds,
        "delay_s": config.delay_s,
        "fail_first": config.fail_first,
        "die_after": config.die_after,
    }


def define_serve_test_flags(flag_values=FLAGS):
    define_config_flags(ServeTestConfig, flag_values)


def serve_test_args_from_flags(flag_values=FLAGS):
    return dataclasses.asdict(config_from_field_flags(ServeTestConfig, flag_values).validate())
