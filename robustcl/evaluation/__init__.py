"""Evaluation users can trust: an attack suite, the AutoAttack-style cascade, per-example worst
case, checks against gradient masking, and reports (JSON, Markdown, PNG, TensorBoard).

  evaluate      this module: robustcl.evaluate(model, x, y, ...) -> Report, for any classifier
  engine        the attack loop over chunks of points and their merge into the report
  suite, attacks, autoattack   the attacks an evaluation can run and AutoAttack's cascade
  checks        hard checks on adversarial inputs and warnings of gradient masking
  classifiers   loading a classifier of any kind (run, SavedModel, Keras model, callable)
  chunks        finished chunks persisted, for resuming
  run           scripts/evaluate.py's evaluation: persisted chunks, shards, devices, reports on disk
  report        the report's files; settings: EvaluationConfig

Imports training (a run's network, its layout) and below.
"""

import dataclasses
import hashlib

import numpy as np

from robustcl.evaluation import attacks as eval_attacks
from robustcl.evaluation import classifiers
from robustcl.evaluation.checks import EvaluationError
from robustcl.evaluation.chunks import ChunkStore, read_all
from robustcl.evaluation.engine import Plan, chunk_starts, evaluate_chunk, merge
from robustcl.evaluation.report import Report
from robustcl.evaluation.settings import EVAL_ATTACKS as ATTACKS  # the default list; names: EVALUATION_ATTACKS
from robustcl.evaluation.suite import Attacker
from robustcl.files import fingerprint


def _images_and_labels(x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x: expected images [N, H, W, C], got shape {list(x.shape)}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected {len(x)} integer labels [N], got {y.dtype} of shape {list(y.shape)}")
    x = x.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 1):
        raise ValueError(
            f"x: pixels must be in [0, 1] (the threat model's units), got [{low:.4g}, {high:.4g}]"
            + ("; divide uint8 images by 255" if high > 1 else "")
        )
    return x, y.astype(np.int64)


def _model_key(classifier, model):
    """What the stored chunks of a resumed evaluation must have been made by: the model's files, or
    its weights, or (a callable) its name."""
    if classifier.files:
        return fingerprint(*classifier.files)
    weights = getattr(model, "weights", None)
    if weights:
        digest = hashlib.sha1()
        for w in weights:
            digest.update(np.asarray(w.numpy()).tobytes())
        return digest.hexdigest()[:16]
    return classifier.name


def evaluate(
    model,
    x,
    y,
    class_names=None,
    *,
    norm="linf",
    eps=8 / 255,
    version="standard",
    attacks=ATTACKS,
    pgd_steps=20,
    pgd_step_size=None,
    pgd_restarts=1,
    apgd_iterations=100,
    square_queries=5000,
    apgd_restarts=0,
    fab_restarts=0,
    eot_iterations=0,
    square_restarts=0,
    sweep=True,
    sweep_attack="pgd",
    seed=0,
    batch_size=256,
    chunk_size=500,
    progress=True,
    state_dir=None,
    input_range="0,1",
    outputs="logits",
    model_name=None,
    data_name="",
):
    """Attacks a classifier on (x, y) and returns its Report: the per-example worst case over every
    attack, each attack's robust accuracy, the AutoAttack cascade stage by stage, and warnings of
    gradient masking.

        report = robustcl.evaluate(classifier, x_test, y_test, norm="linf", eps=8 / 255, version="standard")
        report.robust_accuracy, report.per_attack, report.warnings, report.to_json()

    Args:
      model: a Keras model returning logits (one whose last layer is a softmax is attacked through
        the logarithm of its probabilities, with a note), a path (a training run's directory, a
        SavedModel, a .keras file) or a Python callable on NHWC float32 images in [0, 1] returning
        logits; outputs="probabilities" for a model that returns probabilities.
      x, y: images in [0, 1] [N, H, W, C] and integer labels [N].
      class_names: names in label order (default "0", "1", ...).
      norm, eps: the threat model ("linf" or "l2"; eps in [0, 1] pixel units).
      version, attacks: AutoAttack's version (standard, plus, rand; custom: the AutoAttack stages
        listed in `attacks`, in order) and the attacks to run by their registered names
        (robustcl.evaluation.attacks; "autoattack" runs the version's cascade). The budgets
        (pgd_steps, apgd_iterations, square_queries, restarts) default to the reference's.
      sweep, sweep_attack: accuracy against a range of eps, for the masking checks.
      state_dir: keep finished chunks of `chunk_size` points here; a rerun resumes from them (and
        refuses a directory made with another model, data or settings).
      input_range: "0,255" for a model that takes pixels in [0, 255] (x and eps stay in [0, 1]).

    Raises EvaluationError when an adversarial input leaves the threat set or [0, 1], has NaN, or an
    example counts robust while misclassified clean; ValueError (ModelLoadError, ConfigError)
    naming the problem for inputs that cannot be evaluated.
    """
    eval_attacks.check("attacks", attacks, norm, version)
    x, y = _images_and_labels(x, y)
    classifier = classifiers.from_model(model, input_range, outputs, model_name)
    probe = np.asarray(classifier.network(x[:2], training=False)["logits"])
    if probe.ndim != 2:
        raise classifiers.ModelLoadError(
            f"the model returns shape {list(probe.shape)}; expected logits [batch, classes]"
        )
    num_classes = probe.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y: labels must be in [0, {num_classes}) for a model of {num_classes} classes")
    classifiers.check_against_data(classifier, x.shape[1:], num_classes, x[:2], outputs)
    class_names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"class_names: {len(class_names)} names for a model of {num_classes} classes")
    plan = Plan(
        norm=norm,
        eps=eps,
        attacks=tuple(attacks),
        pgd_steps=pgd_steps,
        pgd_step_size=pgd_step_size,
        pgd_restarts=pgd_restarts,
        apgd_iterations=apgd_iterations,
        square_queries=square_queries,
        version=version,
        apgd_restarts=apgd_restarts,
        fab_restarts=fab_restarts,
        eot_iterations=eot_iterations,
        square_restarts=square_restarts,
        sweep=sweep,
        sweep_attack=sweep_attack,
        seed=seed,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    log = print if progress else (lambda *a, **k: None)
    attacker = Attacker(classifier.network, batch_size, progress)
    starts = chunk_starts(len(x), chunk_size)

    def run(start):
        end = start + chunk_size
        return evaluate_chunk(attacker, x[start:end], y[start:end], start, plan, log, preflight=(start == 0))

    if state_dir is None:
        chunks = [run(start) for start in starts]
    else:
        data_key = hashlib.sha1(x.tobytes() + y.tobytes()).hexdigest()[:16]
        store = ChunkStore(
            state_dir,
            {"model": _model_key(classifier, model), "data": data_key, **dataclasses.asdict(plan)},
            flag="state_dir",
        )
        store.check_settings()
        for start in starts:
            if not store.has(start):
                store.write(run(start))
        chunks = read_all(store, starts, 1)
    report = merge(chunks, y, class_names, plan, model_name=classifier.name, data_name=data_name)
    report["model_notes"] = list(classifier.notes)
    return Report(report)


__all__ = ["ATTACKS", "EvaluationError", "Plan", "Report", "chunk_starts", "evaluate", "evaluate_chunk", "merge"]
