"""The only module that defines or reads absl flags.

`define_train_flags()` defines every flag (all optional, defaults as in `robustcl.config`);
`config_from_flags()` turns the parsed flags into a validated, frozen `ExperimentConfig`, failing
with a message that names the flag before any work is done. A flagfile may include another with a
`--flagfile=...` line (absl resolves nested flagfiles); later lines override earlier ones.
Method hyperparameters are flags named `--<method>_<param>`, generated from each method's Params.
"""

import dataclasses
import fractions
import os
import typing

from absl import flags

from robustcl import config as cfg

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
    flags.DEFINE(FractionParser(), name, default, help_text, flag_values,
                 flags.ArgumentSerializer())


def _method_param_flags():
    """(flag name, method name, field) for every hyperparameter of every registered method."""
    from robustcl import methods  # registers all methods

    for method_name in methods.METHODS.names():
        params_class = methods.get(method_name).Params
        for field in dataclasses.fields(params_class):
            yield f"{method_name}_{field.name}", method_name, field


def _choices_help(field):
    registry = cfg.choices_of(field)
    if registry is None:
        return ""
    entries = [(name, getattr(registry.get(name), "about", None)) for name in registry.names()]
    if all(about for _, about in entries):
        return " " + "; ".join(f"{name}: {about}" for name, about in entries) + "."
    return f" One of: {', '.join(name for name, _ in entries)}."


_FIELD_DEFAULT = object()


def define_field_flag(field, flag_values, name=None, help_suffix="", default=_FIELD_DEFAULT, help_text=None):
    """Defines the flag of a config field (robustcl.config.option): its type from the field's
    default, its help from the metadata (or `help_text`), the choices from the field's registry."""
    name = name or cfg.flag_name(field)
    help_text = (help_text or field.metadata.get("help", field.name)) + help_suffix
    choices = _choices_help(field)
    if choices:
        help_text = help_text.rstrip(".") + "." + choices
    if default is _FIELD_DEFAULT:
        default = field.default
    elif isinstance(field.default, (bool, int, float)):  # the type comes from the field
        default = type(field.default)(default)
    if isinstance(default, bool):
        flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif isinstance(default, int):
        flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif isinstance(default, float):
        _define_fraction(name, default, help_text, flag_values)
    elif isinstance(default, tuple):
        flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
    else:
        flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def _define_data_flags(defaults, flag_values):
    """Which data and where, shared with training: DataConfig's fields, with `defaults`' values
    (an evaluation's dataset defaults to the model's own)."""
    fields = cfg.DataConfig.__dataclass_fields__
    define_field_flag(fields["dataset"], flag_values, default=defaults.dataset or None,
                      help_suffix=" Default: the model's own.")
    for name in ("data_dir", "download", "image_size"):
        define_field_flag(fields[name], flag_values, default=getattr(defaults, name))


def _check_name(registry, flag, value):
    if value not in registry:
        raise cfg.ConfigError(f"--{flag}: {registry.unknown_message(value)}")


def _flag_fields(config_class, skip=()):
    return [f for f in dataclasses.fields(config_class)
            if "help" in f.metadata and f.metadata["flag"] is not False and f.name not in skip]


def define_config_flags(config_class, flag_values, skip=()):
    """A flag for every field of a config dataclass (but `skip`, which the caller defines)."""
    for field in _flag_fields(config_class, skip):
        define_field_flag(field, flag_values)


def _field_value(field, value, flag):
    if isinstance(field.default, tuple):
        args = typing.get_args(field.type)
        return _int_list(flag, value) if args and args[0] is int else tuple(value)
    if field.type is str and value is None:
        return ""
    return value


def config_from_field_flags(config_class, flag_values, **given):
    """A config dataclass from its fields' flags; `given` sets fields the flags do not."""
    values = {field.name: _field_value(field, flag_values[cfg.flag_name(field)].value, cfg.flag_name(field))
              for field in _flag_fields(config_class, skip=given)}
    return config_class(**values, **given)


EXTRA_MODULES = "extra_modules"


def import_modules(names):
    """Imports a user's modules (which register methods or backbones with robustcl.methods.register
    and robustcl.models.register), from the working directory or sys.path."""
    import importlib
    import sys

    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # any failure: the user's module is named with the reason
            raise cfg.ConfigError(f"--{EXTRA_MODULES}: cannot import {name!r}: "
                                  f"{type(error).__name__}: {error}") from None


def import_extra_modules(argv, flag_values=FLAGS):
    """Imports the modules --extra_modules names on the command line or in its flagfiles, before
    the flags are defined, so their methods' and backbones' flags and names exist (as tf-models
    imports experiment modules). Returns the names."""
    names = []
    for arg in flag_values.read_flags_from_files(list(argv[1:]), force_gnu=False):
        if arg.startswith(f"--{EXTRA_MODULES}="):
            names += [n.strip() for n in arg.split("=", 1)[1].split(",") if n.strip()]
    import_modules(names)
    return names


# Configs whose every field is a flag of the field's name (the others: see define_train_flags).
_TRAIN_CONFIGS = (cfg.DataConfig, cfg.ModelConfig, cfg.OptimizerConfig, cfg.ProjectorConfig)


def define_train_flags(flag_values=FLAGS):
    """Every training flag: one per config field (robustcl.config.option), then one per method
    hyperparameter (--<method>_<field>). Defined by hand here: only flags whose value is resolved
    before a config holds it (--precision, --jit_compile: "auto") and the validation attack's."""
    for config_class in _TRAIN_CONFIGS:
        define_config_flags(config_class, flag_values)
    define_config_flags(cfg.MethodConfig, flag_values)
    define_config_flags(cfg.AttackConfig, flag_values)
    run_fields = cfg.RunConfig.__dataclass_fields__
    define_config_flags(cfg.RunConfig, flag_values, skip=("precision", "jit_compile"))
    flags.DEFINE_string("precision", "auto", run_fields["precision"].metadata["help"]
                        + _choices_help(run_fields["precision"]), flag_values=flag_values)
    flags.DEFINE_string("jit_compile", "auto", run_fields["jit_compile"].metadata["help"],
                        flag_values=flag_values)
    attack_fields = cfg.AttackConfig.__dataclass_fields__
    for field_name, help_text in (("step_size", "Validation PGD step size (model selection)."),
                                  ("steps", "Validation PGD steps (model selection).")):
        define_field_flag(attack_fields[field_name], flag_values,
                          name=cfg.AttackConfig.VALIDATION_FLAGS[field_name], help_text=help_text)
    for flag_name, method_name, field in _method_param_flags():
        define_field_flag(field, flag_values, name=flag_name, help_suffix=f" ({method_name})")


def _int_list(flag_name, values):
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise cfg.ConfigError(f"--{flag_name}: expected whole numbers, got {','.join(values)}") from None


def _resolve_jit_compile(value):
    value = str(value).lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    if value != "auto":
        raise cfg.ConfigError(f"--jit_compile: expected true, false or auto, got {value!r}")
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _resolve_precision(value):
    """--precision, with auto resolved by the hardware (robustcl.hardware)."""
    if value == "auto":
        from robustcl import hardware

        return hardware.auto_precision(hardware.detect())
    return value


def config_from_flags(flag_values=FLAGS):
    """Parsed flags -> validated ExperimentConfig. Raises ConfigError naming the offending flag."""
    from robustcl import data, methods

    f = flag_values
    data_config = config_from_field_flags(cfg.DataConfig, f)
    data_config.validate()  # the dataset's name, before its spec is read
    try:
        data.image_size_of(data.dataset_spec(f.dataset), f.image_size)
    except ValueError as error:
        raise cfg.ConfigError(f"--image_size: {error}") from None
    method = config_from_field_flags(cfg.MethodConfig, f, params=None)
    method.validate()
    method_class = methods.get(method.name)
    params = method_class.Params(**{
        field.name: f[flag_name].value for flag_name, method_name, field in _method_param_flags()
        if method_name == method.name})
    methods.check_params(method.name, params)  # raises ConfigError naming --<method>_<param>
    # The head the method declares, unless the flags say otherwise.
    head = {name: f[name].value if f[name].present or not getattr(method_class, name)
            else getattr(method_class, name) for name in ("embedding_dim", "embedding_head")}
    train_attack = config_from_field_flags(cfg.AttackConfig, f)
    val = cfg.AttackConfig.VALIDATION_FLAGS
    config = cfg.ExperimentConfig(
        data=data_config,
        model=config_from_field_flags(cfg.ModelConfig, f, **head),
        method=cfg.MethodConfig(name=method.name, params=params),
        train_attack=train_attack,
        val_attack=dataclasses.replace(train_attack, name="pgd", step_size=f[val["step_size"]].value,
                                       steps=f[val["steps"]].value, random_start=True),
        optimizer=config_from_field_flags(cfg.OptimizerConfig, f),
        run=config_from_field_flags(cfg.RunConfig, f, precision=_resolve_precision(f.precision),
                                    jit_compile=_resolve_jit_compile(f.jit_compile)),
        projector=config_from_field_flags(cfg.ProjectorConfig, f),
    )
    return config.validate()


def _define_attack_budget_flags(defaults, flag_values):
    """The evaluation attacks' budgets (EvaluationConfig's fields), for reproduce.py's defaults."""
    fields = cfg.EvaluationConfig.__dataclass_fields__
    for name in ("pgd_steps", "apgd_iterations", "square_queries"):
        define_field_flag(fields[name], flag_values, default=getattr(defaults, name))


def define_evaluate_flags(flag_values=FLAGS):
    """One flag per EvaluationConfig field, and the data flags training has."""
    define_config_flags(cfg.EvaluationConfig, flag_values)
    _define_data_flags(cfg.EvaluationConfig(), flag_values)


def evaluation_config_from_flags(flag_values=FLAGS):
    f = flag_values
    if f.model_dir and not os.path.isdir(f.model_dir):
        raise cfg.ConfigError(f"--model_dir: {f.model_dir} is not a directory")
    if f.saved_model and not os.path.isfile(os.path.join(f.saved_model, "saved_model.pb")):
        raise cfg.ConfigError(f"--saved_model: no saved_model.pb in {f.saved_model}")
    if f.keras_model and not os.path.isfile(f.keras_model):
        raise cfg.ConfigError(f"--keras_model: {f.keras_model} is not a file")
    if f.dataset is not None:
        from robustcl.data import DATASETS

        _check_name(DATASETS, "dataset", f.dataset)
    return config_from_field_flags(cfg.EvaluationConfig, f, dataset=f.dataset or "", image_size=f.image_size,
                                   data_dir=f.data_dir, download=f.download).validate()


def define_export_flags(flag_values=FLAGS):
    flags.DEFINE_string("model_dir", None, "Training run directory.", flag_values=flag_values)
    flags.DEFINE_string("export_dir", None, "Base directory; the model goes to "
                        "EXPORT_DIR/<model_name>/<version>/.", flag_values=flag_values)
    flags.DEFINE_string("model_name", None, "Name under EXPORT_DIR (default: the run directory's "
                        "name).", flag_values=flag_values)
    flags.DEFINE_integer("version", None, "Version directory (default: one above the highest).",
                         flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "best", "best or last.", flag_values=flag_values)


def export_args_from_flags(flag_values=FLAGS):
    """Validated export arguments as a dict (flags are read nowhere else)."""
    f = flag_values
    if not f.model_dir or not os.path.isdir(f.model_dir):
        raise cfg.ConfigError(f"--model_dir: {f.model_dir!r} is not a directory")
    if not f.export_dir:
        raise cfg.ConfigError("--export_dir: is required")
    if f.version is not None and f.version < 1:
        raise cfg.ConfigError(f"--version: must be >= 1, got {f.version}")
    if f.checkpoint not in ("best", "last"):
        raise cfg.ConfigError(f"--checkpoint: must be best or last, got {f.checkpoint!r}")
    if f.model_name is not None and (not f.model_name or "/" in f.model_name):
        raise cfg.ConfigError(f"--model_name: {f.model_name!r} is not a directory name")
    return {"model_dir": f.model_dir, "export_dir": f.export_dir, "model_name": f.model_name,
            "version": f.version, "checkpoint": f.checkpoint}


def define_model_server_flags(flag_values=FLAGS):
    """tensorflow_model_server's flags (model_servers/main.cc) that the stand-in implements, with
    their defaults, and the stand-in's own failure-injection flags for tests."""
    flags.DEFINE_integer("port", 8500, "Port for gRPC (0: no gRPC).", flag_values=flag_values)
    flags.DEFINE_integer("rest_api_port", 0, "Port for the HTTP/REST API (0: no REST).",
                         flag_values=flag_values)
    flags.DEFINE_string("model_name", "default", "Name of the model (with --model_base_path).",
                        flag_values=flag_values)
    flags.DEFINE_string("model_base_path", "", "Path holding the model's numeric version "
                        "directories.", flag_values=flag_values)
    flags.DEFINE_string("model_config_file", "", "A ModelServerConfig text proto: the models, their "
                        "base paths, version policies and labels (instead of --model_name/"
                        "--model_base_path).", flag_values=flag_values)
    flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "Seconds between polls of the base "
                         "paths for new (and removed) versions; 0 polls once, < 0 never.",
                         flag_values=flag_values)
    flags.DEFINE_string("host", "0.0.0.0", "Address to listen on (tensorflow_model_server listens "
                        "on every interface).", flag_values=flag_values)
    flags.DEFINE_float("delay_s", 0.0, "Stand-in only, for failure tests: sleep before every "
                       "predict.", flag_values=flag_values)
    flags.DEFINE_integer("fail_first", 0, "Stand-in only, for failure tests: answer the first N "
                         "predicts as unavailable (REST 503, gRPC UNAVAILABLE).", flag_values=flag_values)
    flags.DEFINE_integer("die_after", 0, "Stand-in only, for failure tests: exit abruptly at predict "
                         "N+1.", flag_values=flag_values)


def model_server_args_from_flags(flag_values=FLAGS):
    """The server's settings, checked: the models as servables.ModelConfig entries."""
    from robustcl.serving.servables import ModelConfig, parse_model_config_file

    f = flag_values
    if f.model_config_file:
        if f.model_base_path:
            raise cfg.ConfigError("--model_config_file and --model_base_path: give one (the config "
                                  "file names every model's base path)")
        try:
            models = parse_model_config_file(f.model_config_file)
        except ValueError as error:
            raise cfg.ConfigError(str(error)) from None
    elif f.model_base_path:
        models = [ModelConfig(f.model_name, f.model_base_path)]
    else:
        raise cfg.ConfigError("--model_base_path (with --model_name) or --model_config_file: give one")
    for model in models:
        if not os.path.isdir(model.base_path):
            raise cfg.ConfigError(f"model {model.name}: base path {model.base_path} is not a directory")
    for name in ("port", "rest_api_port"):
        if not 0 <= f[name].value <= 65535:
            raise cfg.ConfigError(f"--{name}: must be a port in [0, 65535], got {f[name].value}")
    if not f.port and not f.rest_api_port:
        raise cfg.ConfigError("--port and --rest_api_port are both 0: nothing would be served")
    if f.port and f.port == f.rest_api_port:
        raise cfg.ConfigError(f"--port and --rest_api_port: both {f.port}; gRPC and REST need two ports")
    for name in ("fail_first", "die_after"):
        if f[name].value < 0:
            raise cfg.ConfigError(f"--{name}: must be >= 0, got {f[name].value}")
    return {"models": models, "grpc_port": f.port, "rest_port": f.rest_api_port, "host": f.host,
            "poll_wait_seconds": f.file_system_poll_wait_seconds, "delay_s": max(f.delay_s, 0.0),
            "fail_first": f.fail_first, "die_after": f.die_after}


def define_serve_test_flags(flag_values=FLAGS):
    flags.DEFINE_string("server", None, "TF Serving REST address, e.g. http://127.0.0.1:8501.",
                        flag_values=flag_values)
    flags.DEFINE_string("grpc", None, "Or TF Serving's gRPC address, HOST:PORT (e.g. "
                        "127.0.0.1:8500): images go as TensorProtos.", flag_values=flag_values)
    flags.DEFINE_string("model", None, "Model name on the server.", flag_values=flag_values)
    flags.DEFINE_integer("model_version", None, "Version on the server (default: its latest).",
                         flag_values=flag_values)
    flags.DEFINE_string("saved_model", None, "The export, in process: the target when no --server "
                        "is given, else the white-box model for transfer attacks.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Official archive/folder or tfds directory.",
                        flag_values=flag_values)
    flags.DEFINE_string("dataset", None, "The test data, any --dataset of training (default: the "
                        "export's config).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_examples", 200, "First N test images.", flag_values=flag_values)
    _define_fraction("eps", 8 / 255, "L-inf budget.", flag_values)
    flags.DEFINE_integer("pgd_steps", 20, "Steps of the white-box transfer attack.", flag_values=flag_values)
    flags.DEFINE_integer("square_queries", 1000, "Square query budget per image.", flag_values=flag_values)
    flags.DEFINE_integer("chunk", 32, "Images per unit of resumable work.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where results.jsonl and the reports go.",
                        flag_values=flag_values)
    flags.DEFINE_float("timeout", 30.0, "Seconds before a request times out.", flag_values=flag_values)
    flags.DEFINE_integer("max_retries", 4, "Retries of a failed idempotent request.", flag_values=flag_values)
    flags.DEFINE_integer("max_batch", 64, "Images per request at most.", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the attacks.", flag_values=flag_values)


def serve_test_args_from_flags(flag_values=FLAGS):
    f = flag_values
    if f.server and f.grpc:
        raise cfg.ConfigError("--server and --grpc: give one (REST or gRPC)")
    if not f.server and not f.grpc and not f.saved_model:
        raise cfg.ConfigError("--server, --grpc or --saved_model: give at least one")
    if (f.server or f.grpc) and not f.model:
        raise cfg.ConfigError(f"--model: required with --{'server' if f.server else 'grpc'}")
    if f.grpc and (f.grpc.startswith(("http://", "https://")) or ":" not in f.grpc):
        raise cfg.ConfigError(f"--grpc: expected HOST:PORT, got {f.grpc!r}")
    if f.server and not f.server.startswith(("http://", "https://")):
        raise cfg.ConfigError(f"--server: expected http://HOST:PORT, got {f.server!r}")
    if f.saved_model and not os.path.isfile(os.path.join(f.saved_model, "saved_model.pb")):
        raise cfg.ConfigError(f"--saved_model: no saved_model.pb in {f.saved_model}")
    if not f.output_dir:
        raise cfg.ConfigError("--output_dir: is required")
    for name in ("num_examples", "pgd_steps", "square_queries", "chunk", "max_batch"):
        if f[name].value < 1:
            raise cfg.ConfigError(f"--{name}: must be >= 1, got {f[name].value}")
    if not 0 <= f.eps <= 1:
        raise cfg.ConfigError(f"--eps: must be in [0, 1], got {f.eps}")
    return {k: f[k].value for k in ("server", "grpc", "model", "model_version", "saved_model", "data_dir",
                                    "dataset", "num_examples", "eps", "pgd_steps", "square_queries",
                                    "chunk", "output_dir", "timeout", "max_retries", "max_batch", "seed")}


def define_reproduce_flags(flag_values=FLAGS):
    r = cfg.ReproduceConfig
    flags.DEFINE_multi_string("cell", [], "A cell of the grid: 'NAME METHOD_FLAGFILE [--flag=value "
                              "...]' (repeat the flag, one cell each).", flag_values=flag_values)
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds; every cell trains once per seed.",
                      flag_values=flag_values)
    flags.DEFINE_string("train_flagfile", None, "Training settings of the protocol (network, data "
                        "subset, epochs, batch, optimizer, schedule, threat model), applied after "
                        "each cell's method flagfile so every method trains alike.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "CIFAR-10 in the official layout (archive or folder).",
                        flag_values=flag_values)
    flags.DEFINE_string("runs_dir", None, "Where the runs go: RUNS_DIR/<cell>/seed<S>/ (TensorBoard "
                        "logs, checkpoints, evaluation reports).", flag_values=flag_values)
    flags.DEFINE_string("record_dir", "docs/results", "Where the record goes.", flag_values=flag_values)
    flags.DEFINE_string("record_name", None, "The record's file name: RECORD_DIR/NAME.md, .json, .png.",
                        flag_values=flag_values)
    flags.DEFINE_integer("eval_examples", r.eval_examples, "First N test images evaluated.",
                         flag_values=flag_values)
    flags.DEFINE_list("eval_attacks", list(r.eval_attacks), "Attacks on the best checkpoint (the "
                      "last checkpoint gets clean and PGD).", flag_values=flag_values)
    _define_attack_budget_flags(r, flag_values)
    flags.DEFINE_integer("eval_batch_size", r.eval_batch_size, "Attack batch size.",
                         flag_values=flag_values)
    flags.DEFINE_integer("parallel", r.parallel, "Cells run at once (one process each).",
                         flag_values=flag_values)
    flags.DEFINE_integer("threads_per_cell", r.threads_per_cell, "TensorFlow threads per cell's "
                         "process (0: TensorFlow's default).", flag_values=flag_values)
    flags.DEFINE_string("surrogate_flagfile", r.surrogate_flagfile, "Method flagfile of the black-box "
                        "surrogate: trained once (with --train_flagfile, at --surrogate_seed), it "
                        "crafts transfer attacks on every cell's best checkpoint. Empty: no transfer "
                        "stage.", flag_values=flag_values)
    flags.DEFINE_integer("surrogate_seed", r.surrogate_seed, "Seed of the surrogate's training (not "
                         "one of --seeds).", flag_values=flag_values)
    flags.DEFINE_bool("record_only", r.record_only, "Write the record from the finished stages in "
                      "--runs_dir and stop: nothing is trained or evaluated.", flag_values=flag_values)


def _repro_cell(spec):
    parts = spec.split()
    if len(parts) < 2:
        raise cfg.ConfigError(f"--cell: expected 'NAME METHOD_FLAGFILE [--flag=value ...]', got {spec!r}")
    return cfg.ReproCell(parts[0], parts[1], tuple(parts[2:]))


def reproduce_config_from_flags(flag_values=FLAGS):
    f = flag_values
    return cfg.ReproduceConfig(
        cells=tuple(_repro_cell(spec) for spec in f.cell), seeds=_int_list("seeds", f.seeds),
        train_flagfile=f.train_flagfile or "", data_dir=f.data_dir or "", runs_dir=f.runs_dir or "",
        record_dir=f.record_dir or "", record_name=f.record_name or "",
        eval_examples=f.eval_examples, eval_attacks=tuple(f.eval_attacks), pgd_steps=f.pgd_steps,
        apgd_iterations=f.apgd_iterations, square_queries=f.square_queries,
        eval_batch_size=f.eval_batch_size, parallel=f.parallel,
        threads_per_cell=f.threads_per_cell, surrogate_flagfile=f.surrogate_flagfile or "",
        surrogate_seed=f.surrogate_seed, record_only=f.record_only).validate()
