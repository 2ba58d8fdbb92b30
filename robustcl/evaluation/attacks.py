"""The evaluation's attacks by name. Each is registered with its spec and how it runs on a chunk of
points; `evaluate_chunk` looks up the names in the plan, so a new attack is one registration (here,
or in a module of the user's imported before evaluating).

`run(attacker, x, y, clean_correct, plan, seed, log)` returns the attack's AttackResults (the
cascade one per stage). Budgets come from the plan (pgd_steps, pgd_restarts, apgd_iterations,
square_queries); the PGD step size is written once, in `Plan.step_size`.
"""

import dataclasses
from typing import Callable, Tuple

from robustcl.config import NORMS, ConfigError
from robustcl.registry import Registry

EVALUATION_ATTACKS = Registry("attack")


@dataclasses.dataclass(frozen=True)
class EvaluationAttack:
    name: str
    about: str
    run: Callable
    norms: Tuple[str, ...] = NORMS
    rows: Tuple[str, ...] = ()  # report rows, when not just its name (the cascade's stages)


def register(name, about, norms=NORMS, rows=()):
    def decorator(run):
        EVALUATION_ATTACKS.register(name)(EvaluationAttack(name, about, run, tuple(norms), tuple(rows)))
        return run

    return decorator


def check(flag, names, norm=None):
    """ConfigError naming --flag when a name is unknown, the list is empty, or an attack does not
    support the norm."""
    unknown = [n for n in names if n not in EVALUATION_ATTACKS]
    if unknown or not names:
        raise ConfigError(f"--{flag}: unknown {', '.join(unknown) or 'empty list'}; known: "
                          f"{', '.join(EVALUATION_ATTACKS.names())}")
    if norm is not None:
        for name in names:
            attack = EVALUATION_ATTACKS.get(name)
            if norm not in attack.norms:
                raise ConfigError(f"--{flag}: {name} supports {', '.join(attack.norms)}, not {norm}")


@register("fgsm", "one signed-gradient step of size eps on the cross-entropy, no random start")
def _fgsm(attacker, x, y, clean_correct, plan, seed, log):
    return [attacker.gradient_attack("fgsm", x, y, plan.norm, plan.eps, 1, plan.eps, 1, "ce", seed,
                                     random_start=False, clean_correct=clean_correct)]


@register("pgd", "PGD on the cross-entropy: --pgd_steps steps of 2.5 eps / steps from "
                 "--pgd_restarts random starts")
def _pgd(attacker, x, y, clean_correct, plan, seed, log):
    return [attacker.gradient_attack("pgd", x, y, plan.norm, plan.eps, plan.pgd_steps, plan.step_size,
                                     plan.pgd_restarts, "ce", seed, clean_correct=clean_correct)]


@register("pgd-strong", "PGD with twice the steps at half the step size and two more restarts: "
                        "accuracy must not rise above PGD's")
def _pgd_strong(attacker, x, y, clean_correct, plan, seed, log):
    return [attacker.gradient_attack("pgd-strong", x, y, plan.norm, plan.eps, 2 * plan.pgd_steps,
                                     plan.step_size / 2, plan.pgd_restarts + 2, "ce", seed + 1,
                                     clean_correct=clean_correct)]


@register("cw", "PGD on the CW margin loss (the literature's CW-Linf)")
def _cw(attacker, x, y, clean_correct, plan, seed, log):
    return [attacker.gradient_attack("cw", x, y, plan.norm, plan.eps, plan.pgd_steps, plan.step_size,
                                     plan.pgd_restarts, "cw", seed, clean_correct=clean_correct)]


@register("autoattack", "the AutoAttack standard cascade: APGD-CE, APGD-T (9 targets), FAB-T "
                        "(9 targets), Square, each on the points still robust",
          rows=("apgd-ce", "apgd-t", "fab-t", "square"))
def _autoattack(attacker, x, y, clean_correct, plan, seed, log):
    from robustcl.evaluation.suite import autoattack_cascade

    return autoattack_cascade(attacker, x, y, plan.norm, plan.eps, seed, plan.apgd_iterations,
                              square_queries=plan.square_queries, log=log)
