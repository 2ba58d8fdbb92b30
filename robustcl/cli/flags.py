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

from absl import flags

from robustcl import config as cfg
from robustcl.registry import unknown_message

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


def _define_data_flags(defaults, flag_values):
    """Which data and where: shared by training and evaluation."""
    from robustcl.data import DATASETS

    flags.DEFINE_string("dataset", defaults.dataset or None, "; ".join(
        f"{name}: {spec.about}" for name, spec in sorted(DATASETS.items())) + ".",
        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "The dataset's official layout (CIFAR archive or its "
                        "folder, tiny-imagenet-200/), an image folder tree (train/<class>/*, "
                        "val/<class>/*), a directory holding one of them, or a tfds data directory.",
                        flag_values=flag_values)
    flags.DEFINE_bool("download", defaults.download, "Download the data when it is not on disk (tfds, "
                      "or the official archive into the Keras cache) if the download host answers; "
                      "--nodownload forbids it.", flag_values=flag_values)
    flags.DEFINE_integer("image_size", defaults.image_size, "Side of the square images for datasets "
                         "of any size (imagenette, folder; default 224): the shorter side is resized "
                         "to it, then the center is cropped. 0: the dataset's own.",
                         flag_values=flag_values)


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


def define_train_flags(flag_values=FLAGS):
    flags.DEFINE_list(EXTRA_MODULES, [], "Python modules to import first: a user's methods and "
                      "backbones registered with robustcl.methods.register / robustcl.models.register.",
                      flag_values=flag_values)
    d = cfg.DataConfig()
    _define_data_flags(d, flag_values)
    flags.DEFINE_integer("val_size", d.val_size, "Training images held out for validation/model "
                         "selection.", flag_values=flag_values)
    flags.DEFINE_integer("train_examples", d.train_examples, "Use only this many training images "
                         "(0: all). For smoke runs.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", d.batch_size, "Global training batch size.",
                         flag_values=flag_values)
    flags.DEFINE_integer("eval_batch_size", d.eval_batch_size, "Global evaluation batch size.",
                         flag_values=flag_values)
    flags.DEFINE_bool("augment", d.augment, "Pad-4 random crop + horizontal flip.",
                      flag_values=flag_values)
    flags.DEFINE_integer("split_seed", d.split_seed, "Seed choosing the validation images.",
                         flag_values=flag_values)

    m = cfg.ModelConfig()
    from robustcl.models.backbones import BACKBONES

    flags.DEFINE_string("model", m.name, f"Backbone: {', '.join(BACKBONES.names())}.",
                        flag_values=flag_values)
    flags.DEFINE_integer("embedding_dim", m.embedding_dim, "Projection head width (0: the embedding "
                         "is the pooled features).", flag_values=flag_values)
    flags.DEFINE_string("embedding_head", m.embedding_head, "Projection head: mlp (Dense-ReLU-Dense) "
                        "or linear.", flag_values=flag_values)
    flags.DEFINE_string("method", cfg.MethodConfig().name, "Training method.",
                        flag_values=flag_values)

    a = cfg.AttackConfig()
    flags.DEFINE_string("attack", a.name, "Training attack: none, fgsm or pgd (methods without an "
                        "attack ignore it).", flag_values=flag_values)
    flags.DEFINE_string("norm", a.norm, "Threat model norm: linf or l2 (training and validation).",
                        flag_values=flag_values)
    _define_fraction("eps", a.eps, "Perturbation budget in [0,1] pixel units, e.g. 8/255.",
                     flag_values)
    _define_fraction("step_size", a.step_size, "Training PGD step size, e.g. 2/255.", flag_values)
    flags.DEFINE_integer("attack_steps", a.steps, "Training PGD steps.", flag_values=flag_values)
    flags.DEFINE_bool("random_start", a.random_start, "Training PGD starts uniformly in the ball.",
                      flag_values=flag_values)
    _define_fraction("val_step_size", a.step_size, "Validation PGD step size.", flag_values)
    flags.DEFINE_integer("val_attack_steps", a.steps, "Validation PGD steps.", flag_values=flag_values)

    o = cfg.OptimizerConfig()
    flags.DEFINE_integer("epochs", o.epochs, "Training epochs.", flag_values=flag_values)
    flags.DEFINE_integer("steps_per_epoch", o.steps_per_epoch, "Steps per epoch (0: one pass over "
                         "the training images).", flag_values=flag_values)
    flags.DEFINE_float("learning_rate", o.learning_rate, "Peak SGD learning rate.",
                       flag_values=flag_values)
    flags.DEFINE_float("momentum", o.momentum, "SGD momentum.", flag_values=flag_values)
    flags.DEFINE_bool("nesterov", o.nesterov, "Nesterov momentum.", flag_values=flag_values)
    flags.DEFINE_float("weight_decay", o.weight_decay, "L2 penalty on all weights (added to the "
                       "gradient, as torch SGD's weight_decay).", flag_values=flag_values)
    flags.DEFINE_string("lr_schedule", o.lr_schedule, "piecewise, cosine or constant.",
                        flag_values=flag_values)
    flags.DEFINE_list("lr_decay_epochs", [str(e) for e in o.lr_decay_epochs], "Epochs after which "
                      "the piecewise schedule multiplies the LR by --lr_decay_factor.",
                      flag_values=flag_values)
    flags.DEFINE_float("lr_decay_factor", o.lr_decay_factor, "Piecewise decay factor.",
                       flag_values=flag_values)
    flags.DEFINE_integer("warmup_epochs", o.warmup_epochs, "Linear LR warmup epochs.",
                         flag_values=flag_values)

    r = cfg.RunConfig()
    flags.DEFINE_string("model_dir", None, "Where the run writes config, logs, checkpoints; rerunning "
                        "with the same directory resumes.", flag_values=flag_values)
    flags.DEFINE_integer("seed", r.seed, "Seed for weights, data order, augmentation and attacks.",
                         flag_values=flag_values)
    flags.DEFINE_string("precision", "auto", "auto, float32, mixed_bfloat16 or mixed_float16. auto: "
                        "mixed_bfloat16 where the device computes bfloat16 natively (CPU flag "
                        "avx512_bf16 or amx_bf16, GPU compute capability >= 8.0), mixed_float16 with "
                        "loss scaling on GPUs of capability 7.x, else float32.", flag_values=flag_values)
    flags.DEFINE_string("jit_compile", "auto", "XLA-compile the attack: true, false, or auto (off on "
                        "CPU, where bench/train_throughput.py measured XLA slower; on with a GPU).",
                        flag_values=flag_values)
    flags.DEFINE_string("strategy", r.strategy, "auto, one_device, mirrored, or multi_worker (the "
                        "cluster in the TF_CONFIG environment variable).",
                        flag_values=flag_values)
    flags.DEFINE_integer("validation_freq", r.validation_freq, "Validate every N epochs.",
                         flag_values=flag_values)
    flags.DEFINE_string("contrastive_scope", r.contrastive_scope, "global: contrastive losses, hard-"
                        "positive mining and MOREL's attention see the global batch, gathered from "
                        "every replica and worker (N replicas train what one device trains); "
                        "replica: each replica's part only (cheaper; another objective).",
                        flag_values=flag_values)
    flags.DEFINE_bool("sync_batchnorm", r.sync_batchnorm, "BatchNorm statistics over the global "
                      "batch when training on several replicas (else per replica).",
                      flag_values=flag_values)

    pc = cfg.ProjectorConfig()
    flags.DEFINE_integer("projector_every_epochs", pc.every_epochs, "Write TensorBoard projector "
                         "embeddings (clean and PGD views of validation images) every N epochs; 0: "
                         "never.", flag_values=flag_values)
    flags.DEFINE_integer("projector_examples", pc.examples, "Validation images in the projector.",
                         flag_values=flag_values)

    for flag_name, method_name, field in _method_param_flags():
        help_text = field.metadata.get("help", field.name) + f" ({method_name})"
        default = field.default
        if isinstance(default, bool):
            flags.DEFINE_bool(flag_name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(flag_name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            _define_fraction(flag_name, default, help_text, flag_values)
        else:
            flags.DEFINE_string(flag_name, default, help_text, flag_values=flag_values)


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


def _known(registry, flag_name, name):
    if name not in registry:
        raise cfg.ConfigError(f"--{flag_name}: {registry.unknown_message(name)}")


def _known_dataset(name):
    from robustcl.data import DATASETS

    if name not in DATASETS:
        raise cfg.ConfigError(f"--dataset: {unknown_message('dataset', name, sorted(DATASETS))}")


def config_from_flags(flag_values=FLAGS):
    """Parsed flags -> validated ExperimentConfig. Raises ConfigError naming the offending flag."""
    from robustcl import methods, models

    f = flag_values
    _known_dataset(f.dataset)
    from robustcl import data

    try:
        data.image_size_of(data.dataset_spec(f.dataset), f.image_size)
    except ValueError as error:
        raise cfg.ConfigError(f"--image_size: {error}") from None
    if f.data_dir is not None and not os.path.exists(f.data_dir):
        raise cfg.ConfigError(f"--data_dir: {f.data_dir} does not exist")
    _known(models.BACKBONES, "model", f.model)
    _known(methods.METHODS, "method", f.method)
    method_class = methods.get(f.method)
    params = method_class.Params(**{
        field.name: f[flag_name].value for flag_name, method_name, field in _method_param_flags()
        if method_name == f.method})
    params.validate()  # raises ConfigError naming --<method>_<param>

    config = cfg.ExperimentConfig(
        data=cfg.DataConfig(dataset=f.dataset, data_dir=f.data_dir, download=f.download,
                            image_size=f.image_size,
                            val_size=f.val_size, train_examples=f.train_examples,
                            batch_size=f.batch_size, eval_batch_size=f.eval_batch_size,
                            augment=f.augment, split_seed=f.split_seed),
        # The head the method declares, unless the flags say otherwise.
        model=cfg.ModelConfig(
            name=f.model,
            embedding_dim=(f.embedding_dim if f["embedding_dim"].present or not method_class.embedding_dim
                           else method_class.embedding_dim),
            embedding_head=(f.embedding_head if f["embedding_head"].present or not method_class.embedding_head
                            else method_class.embedding_head)),
        method=cfg.MethodConfig(name=f.method, params=params),
        train_attack=cfg.AttackConfig(name=f.attack, norm=f.norm, eps=f.eps, step_size=f.step_size,
                                      steps=f.attack_steps, random_start=f.random_start),
        val_attack=cfg.AttackConfig(name="pgd", norm=f.norm, eps=f.eps, step_size=f.val_step_size,
                                    steps=f.val_attack_steps, random_start=True),
        optimizer=cfg.OptimizerConfig(
            epochs=f.epochs, steps_per_epoch=f.steps_per_epoch, learning_rate=f.learning_rate,
            momentum=f.momentum, nesterov=f.nesterov, weight_decay=f.weight_decay,
            lr_schedule=f.lr_schedule, lr_decay_epochs=_int_list("lr_decay_epochs", f.lr_decay_epochs),
            lr_decay_factor=f.lr_decay_factor, warmup_epochs=f.warmup_epochs),
        run=cfg.RunConfig(model_dir=f.model_dir or "", seed=f.seed,
                          precision=_resolve_precision(f.precision),
                          jit_compile=_resolve_jit_compile(f.jit_compile), strategy=f.strategy,
                          validation_freq=f.validation_freq, contrastive_scope=f.contrastive_scope,
                          sync_batchnorm=f.sync_batchnorm,
                          extra_modules=tuple(f[EXTRA_MODULES].value)),
        projector=cfg.ProjectorConfig(every_epochs=f.projector_every_epochs,
                                      examples=f.projector_examples),
    )
    return config.validate()


def _define_attack_budget_flags(defaults, flag_values):
    """The evaluation attacks' budgets, shared by evaluate.py and reproduce.py."""
    flags.DEFINE_integer("pgd_steps", defaults.pgd_steps, "PGD and CW steps.", flag_values=flag_values)
    flags.DEFINE_integer("apgd_iterations", defaults.apgd_iterations, "APGD iterations (AutoAttack: "
                         "100).", flag_values=flag_values)
    flags.DEFINE_integer("square_queries", defaults.square_queries, "Square queries (AutoAttack: "
                         "5000).", flag_values=flag_values)


def define_evaluate_flags(flag_values=FLAGS):
    from robustcl.evaluation import autoattack

    e = cfg.EvaluationConfig()
    flags.DEFINE_string("model_dir", None, "Training run directory to evaluate.", flag_values=flag_values)
    flags.DEFINE_string("saved_model", None, "Or: a SavedModel directory: a robustcl export "
                        "(EXPORT_DIR/<name>/<version>, attacked through its logits signature) or any "
                        "other (through --signature).", flag_values=flag_values)
    flags.DEFINE_string("keras_model", None, "Or: a Keras model file (model.save('m.keras') or .h5).",
                        flag_values=flag_values)
    flags.DEFINE_string("signature", None, "SavedModel signature to attack (default: logits for a "
                        "robustcl export, else serving_default).", flag_values=flag_values)
    flags.DEFINE_string("input_key", None, "The signature's image input, when it has several.",
                        flag_values=flag_values)
    flags.DEFINE_string("output_key", None, "The class-score output, when the model has several "
                        "(default: logits if there is one).", flag_values=flag_values)
    flags.DEFINE_string("input_range", e.input_range, "Pixel range the model takes: 0,1 or 0,255 "
                        "(eps stays in [0, 1] units).", flag_values=flag_values)
    flags.DEFINE_string("outputs", e.outputs, "What the model outputs: logits or probabilities "
                        "(attacked through their logarithm).", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", e.checkpoint, "best or last.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where reports go (default <model_dir>/evaluation_<checkpoint>).",
                        flag_values=flag_values)
    _define_data_flags(e, flag_values)
    flags.DEFINE_integer("num_examples", e.num_examples, "Evaluate the first N test images.",
                         flag_values=flag_values)
    flags.DEFINE_list("attacks", list(e.attacks), "Attacks to run, by their registered names "
                      "(robustcl.evaluation.attacks).",
                      flag_values=flag_values)
    flags.DEFINE_string("norm", None, "linf or l2 (default: the training run's).", flag_values=flag_values)
    _define_fraction("eps", None, "Budget, e.g. 8/255 (default: the training run's).", flag_values)
    _define_attack_budget_flags(e, flag_values)
    flags.DEFINE_integer("pgd_restarts", e.pgd_restarts, "PGD and CW random restarts.",
                         flag_values=flag_values)
    flags.DEFINE_enum("version", e.version, list(autoattack.VERSIONS), "AutoAttack's version, "
                      "with the reference's settings: the cascade the 'autoattack' entry of "
                      "--attacks runs (standard: APGD-CE, APGD-T, FAB-T, Square; plus: APGD-CE and "
                      "APGD-DLR 5 restarts, FAB 5 restarts, Square, APGD-T, FAB-T; rand: APGD-CE and "
                      "APGD-DLR with EOT over 20 draws, for randomized models); custom: the stages "
                      f"listed in --attacks ({', '.join(autoattack.STAGES)}), in that order.",
                      flag_values=flag_values)
    for name, what in (("apgd_restarts", "APGD-CE and APGD-DLR restarts"),
                       ("fab_restarts", "untargeted FAB restarts"),
                       ("eot_iterations", "gradient draws averaged per APGD-CE/DLR step (EOT)"),
                       ("square_restarts", "Square restarts")):
        flags.DEFINE_integer(name, getattr(e, name), f"AutoAttack: {what}; 0: the --version's own.",
                             flag_values=flag_values)
    flags.DEFINE_bool("sweep", e.sweep, "Accuracy vs eps sweep.", flag_values=flag_values)
    flags.DEFINE_string("sweep_attack", e.sweep_attack, f"Attack of the sweep: "
                        f"{', '.join(cfg.SWEEP_ATTACKS)}.", flag_values=flag_values)
    flags.DEFINE_integer("seed", e.seed, "Seed of every random start.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", e.batch_size, "Attack batch size.", flag_values=flag_values)
    flags.DEFINE_integer("projector_examples", e.projector_examples, "Test images whose clean and "
                         "adversarial embeddings go to the TensorBoard projector (0: none).",
                         flag_values=flag_values)
    flags.DEFINE_integer("chunk_size", e.chunk_size, "Points per chunk: the unit of resuming (each "
                         "finished chunk is written to OUTPUT_DIR/chunks/) and of sharding; random "
                         "draws are keyed by the chunk's first point.", flag_values=flag_values)
    flags.DEFINE_integer("num_shards", e.num_shards, "Split the chunks over N shards (chunk k goes "
                         "to shard k mod N); without --shard_index, merge the shards' results into "
                         "the report.", flag_values=flag_values)
    flags.DEFINE_integer("shard_index", None, "Evaluate only this shard's chunks (a job array "
                         "entry); the merge is a separate run without it.", flag_values=flag_values)
    flags.DEFINE_string("transfer_from", None, "A surrogate network (a run directory, a SavedModel "
                        "or a Keras model file): PGD and APGD-CE examples crafted on it are scored "
                        "on the evaluated model, as transfer (black-box) rows of the report.",
                        flag_values=flag_values)
    flags.DEFINE_bool("transfer_in_worst_case", e.transfer_in_worst_case, "Count the transfer rows "
                      "in the per-example worst case.", flag_values=flag_values)
    flags.DEFINE_string("strategy", e.strategy, f"{' or '.join(cfg.EVAL_STRATEGIES)}: mirrored "
                        "spreads the chunks over the machine's GPUs (or logical CPU devices).",
                        flag_values=flag_values)


def evaluation_config_from_flags(flag_values=FLAGS):
    f = flag_values
    if f.model_dir is not None and not os.path.isdir(f.model_dir):
        raise cfg.ConfigError(f"--model_dir: {f.model_dir} is not a directory")
    if f.saved_model is not None and not os.path.isfile(os.path.join(f.saved_model, "saved_model.pb")):
        raise cfg.ConfigError(f"--saved_model: no saved_model.pb in {f.saved_model}")
    if f.transfer_from is not None and not os.path.exists(f.transfer_from):
        raise cfg.ConfigError(f"--transfer_from: {f.transfer_from} does not exist")
    if f.keras_model is not None and not os.path.isfile(f.keras_model):
        raise cfg.ConfigError(f"--keras_model: {f.keras_model} is not a file")
    if f.data_dir is not None and not os.path.exists(f.data_dir):
        raise cfg.ConfigError(f"--data_dir: {f.data_dir} does not exist")
    if f.dataset is not None:
        _known_dataset(f.dataset)
    return cfg.EvaluationConfig(
        model_dir=f.model_dir or "", saved_model=f.saved_model or "",
        keras_model=f.keras_model or "", checkpoint=f.checkpoint, output_dir=f.output_dir or "",
        dataset=f.dataset or "", image_size=f.image_size, signature=f.signature or "",
        input_key=f.input_key or "", output_key=f.output_key or "", input_range=f.input_range,
        outputs=f.outputs, data_dir=f.data_dir, download=f.download, num_examples=f.num_examples,
        attacks=tuple(f.attacks), norm=f.norm or "", eps=-1.0 if f.eps is None else f.eps,
        pgd_steps=f.pgd_steps, pgd_restarts=f.pgd_restarts, apgd_iterations=f.apgd_iterations,
        square_queries=f.square_queries, version=f.version, apgd_restarts=f.apgd_restarts,
        fab_restarts=f.fab_restarts, eot_iterations=f.eot_iterations,
        square_restarts=f.square_restarts, sweep=f.sweep, sweep_attack=f.sweep_attack, seed=f.seed,
        batch_size=f.batch_size, projector_examples=f.projector_examples, chunk_size=f.chunk_size,
        num_shards=f.num_shards, shard_index=-1 if f.shard_index is None else f.shard_index,
        strategy=f.strategy, transfer_from=f.transfer_from or "",
        transfer_in_worst_case=f.transfer_in_worst_case).validate()


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
