"""Evaluation users can trust: an attack suite, the AutoAttack-style cascade, per-example worst
case, checks against gradient masking, and reports (JSON, Markdown, PNG, TensorBoard).

  evaluate      this module: attacks on images in memory -> the report dict
  engine        the attack loop over chunks of points and their merge into the report
  suite, attacks, autoattack   the attacks an evaluation can run and AutoAttack's cascade
  checks        hard checks on adversarial inputs and warnings of gradient masking
  classifiers   loading a classifier of any kind (run, SavedModel, Keras model)
  run           scripts/evaluate.py's evaluation: persisted chunks, shards, devices, reports on disk
  report        the report's files; settings: EvaluationConfig

Imports training (a run's network, its layout) and below.
"""

from robustcl.evaluation import autoattack
from robustcl.evaluation.checks import EvaluationError
from robustcl.evaluation.engine import Plan, chunk_starts, evaluate_chunk, merge
from robustcl.evaluation.settings import EVAL_ATTACKS as ATTACKS  # the default list; names: EVALUATION_ATTACKS
from robustcl.evaluation.suite import Attacker


def evaluate(
    network,
    x,
    y,
    class_names,
    norm="linf",
    eps=8 / 255,
    attacks=ATTACKS,
    pgd_steps=20,
    pgd_step_size=None,
    pgd_restarts=1,
    apgd_iterations=100,
    square_queries=5000,
    sweep=True,
    seed=0,
    batch_size=256,
    progress=True,
    model_name="model",
    data_name="",
    sweep_attack="pgd",
    chunk_size=500,
    version="standard",
    apgd_restarts=0,
    fab_restarts=0,
    eot_iterations=0,
    square_restarts=0,
):
    """Runs the attacks on (x in [0,1], y) in memory, chunk by chunk, and returns the report dict
    (see report.markdown). robustcl.evaluation.run adds persistence, shards and devices.

    Raises EvaluationError when an adversarial input leaves the threat set or [0, 1], has NaN, or an
    example counts robust while misclassified clean.
    """
    autoattack.check(version, attacks)
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
    attacker = Attacker(network, batch_size, progress)
    chunks = [
        evaluate_chunk(attacker, x[s : s + chunk_size], y[s : s + chunk_size], s, plan, log, preflight=(s == 0))
        for s in chunk_starts(len(x), chunk_size)
    ]
    return merge(chunks, y, class_names, plan, model_name, data_name)


__all__ = ["ATTACKS", "EvaluationError", "Plan", "chunk_starts", "evaluate", "evaluate_chunk", "merge"]
