"""Evaluation users can trust: an attack suite, the AutoAttack-style cascade, per-example worst
case, checks against gradient masking, and reports (JSON, Markdown, PNG, TensorBoard)."""

import time

import numpy as np

from robustcl.config import EVAL_ATTACKS as ATTACKS
from robustcl.evaluation import checks
from robustcl.evaluation.checks import EvaluationError
from robustcl.evaluation.suite import Attacker, autoattack_cascade

LARGE_LINF_EPS = 0.5

DEVIATIONS = [
    "Random numbers come from NumPy/TensorFlow generators, so individual adversarial examples "
    "differ from the PyTorch reference (fra31/auto-attack) with the same seed.",
    "FAB-T's projections solve the same problem as the reference's (min-norm step onto the "
    "linearized boundary within [0, 1]) with a different sorted-breakpoint routine; on random "
    "inputs (2 to 3072 dimensions) the steps agree with the reference's within 4e-15.",
]


def evaluate(network, x, y, class_names, norm="linf", eps=8 / 255, attacks=ATTACKS, pgd_steps=20,
             pgd_step_size=None, pgd_restarts=1, apgd_iterations=100, square_queries=5000,
             sweep=True, seed=0, batch_size=256, progress=True, model_name="model", data_name="",
             sweep_attack="pgd"):
    """Runs the attacks on (x in [0,1], y) and returns the report dict (see report.markdown).

    Raises EvaluationError when an adversarial input leaves the threat set or [0, 1], has NaN, or an
    example counts robust while misclassified clean.
    """
    start_all = time.perf_counter()
    log = print if progress else (lambda *a, **k: None)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    attacker = Attacker(network, batch_size, progress)
    logits = attacker.logits(x)
    clean_correct = np.argmax(logits, -1) == y
    num_classes = logits.shape[-1]
    step_size = pgd_step_size or (2.5 * eps / pgd_steps)
    warnings = []

    message = checks.warn_probabilities(logits)
    if message:
        warnings.append(message)
    warnings += checks.warn_nondeterministic(attacker, x)
    warnings += checks.warn_gradients(attacker, x, y)

    results = []
    for name in attacks:
        if name == "fgsm":
            results.append(attacker.gradient_attack("fgsm", x, y, norm, eps, 1, eps, 1, "ce", seed,
                                                    random_start=False, clean_correct=clean_correct))
        elif name == "pgd":
            results.append(attacker.gradient_attack("pgd", x, y, norm, eps, pgd_steps, step_size,
                                                    pgd_restarts, "ce", seed,
                                                    clean_correct=clean_correct))
        elif name == "pgd-strong":  # more steps and restarts: accuracy must not rise
            results.append(attacker.gradient_attack(
                "pgd-strong", x, y, norm, eps, 2 * pgd_steps, step_size / 2, pgd_restarts + 2, "ce",
                seed + 1, clean_correct=clean_correct))
        elif name == "cw":
            results.append(attacker.gradient_attack("cw", x, y, norm, eps, pgd_steps,
                                                    step_size, pgd_restarts, "cw", seed,
                                                    clean_correct=clean_correct))
        elif name == "autoattack":
            results += autoattack_cascade(attacker, x, y, norm, eps, seed, apgd_iterations,
                                          square_queries=square_queries, log=log)
        else:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")

    passed = []
    for result in results:
        checks.check_adversarial_inputs(result, x)
        checks.check_robust_not_above_clean(result, clean_correct)
    passed.append("every adversarial input is inside the eps-ball and [0, 1], without NaN")
    passed.append("no example is robust while misclassified clean")

    by_name = {r.name: r for r in results}
    white_box = [n for n in ("fgsm", "pgd", "pgd-strong", "cw", "apgd-ce", "apgd-t") if n in by_name]
    warnings += checks.warn_attack_ordering(by_name, white_box)

    worst = clean_correct.copy()
    for r in results:
        worst &= r.robust
    sweep_points = []
    sweep_name = {"pgd": f"pgd-{pgd_steps}", "fgsm": "fgsm", "cw": f"cw-{pgd_steps}",
                  "apgd-ce": f"apgd-ce-{apgd_iterations}"}[sweep_attack]
    if sweep:
        multiples = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
        eps_values = sorted({round(m * eps, 8) for m in multiples}
                            | ({LARGE_LINF_EPS} if norm == "linf" else set()))
        for value in eps_values:
            robust = clean_correct if value == 0 else _sweep_point(
                attacker, sweep_attack, x, y, clean_correct, norm, value, pgd_steps, apgd_iterations,
                seed)
            sweep_points.append({"eps": value, "robust_accuracy": float(robust.mean())})
        warnings += checks.warn_sweep(sweep_points, num_classes, norm)

    per_class = []
    for label, class_name in enumerate(class_names):
        mask = y == label
        if mask.any():
            per_class.append({"class": class_name, "label": label, "num_points": int(mask.sum()),
                              "clean_accuracy": float(clean_correct[mask].mean()),
                              "robust_accuracy": float(worst[mask].mean())})
    return {
        "model": model_name, "data": data_name, "num_points": int(len(x)), "norm": norm,
        "eps": float(eps), "seed": int(seed), "num_classes": int(num_classes),
        "clean_accuracy": float(clean_correct.mean()),
        "worst_case_robust_accuracy": float(worst.mean()),
        "attacks": [r.summary(x, clean_correct) for r in results],
        "eps_sweep": sweep_points, "sweep_attack": sweep_name, "per_class": per_class,
        "warnings": warnings, "checks_passed": passed,
        "deviations": [d for d in DEVIATIONS if "autoattack" in attacks],
        "seconds": round(time.perf_counter() - start_all, 2),
    }


def _sweep_point(attacker, attack, x, y, clean_correct, norm, eps, steps, apgd_iterations, seed):
    """Robust mask of one sweep point; its adversarial inputs pass the same hard checks."""
    from robustcl.attacks.apgd import apgd
    from robustcl.evaluation.suite import AttackResult

    if attack == "apgd-ce":
        x_adv, correct = apgd(attacker.logits_fn, x, y, norm, eps, apgd_iterations, seed=seed)
        result = AttackResult(f"sweep apgd-ce eps {eps:.4g}", norm, eps, apgd_iterations, 1, seed,
                              correct, np.asarray(x_adv), 0.0)
    elif attack == "fgsm":
        result = attacker.gradient_attack(f"sweep fgsm eps {eps:.4g}", x, y, norm, eps, 1, eps, 1,
                                          "ce", seed, random_start=False, clean_correct=clean_correct)
    else:
        result = attacker.gradient_attack(f"sweep {attack} eps {eps:.4g}", x, y, norm, eps, steps,
                                          2.5 * eps / steps, 1, "cw" if attack == "cw" else "ce", seed,
                                          clean_correct=clean_correct)
    checks.check_adversarial_inputs(result, x)
    return result.robust & clean_correct


__all__ = ["ATTACKS", "EvaluationError", "evaluate"]
