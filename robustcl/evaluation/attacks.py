"""The evaluation's attacks by name. Each is registered with its spec and how it runs on a chunk of
points; `evaluate_chunk` looks up the names in the plan, so a new attack is one registration (here,
or in a module of the user's imported before evaluating).

`run(attacker, x, y, clean_correct, plan, seed, log)` returns the attack's AttackResults (the
cascade one per stage). Budgets come from the plan (pgd_steps, pgd_restarts, apgd_iterations,
square_queries); the PGD step size is written once, in `Plan.step_size`.
"""

import dataclasses
from typing import Callable, Tuple

from robustcl.attacks.threat import THREATS
from robustcl.settings import ConfigError
from robustcl.registry import Registry
from robustcl.evaluation import autoattack

EVALUATION_ATTACKS = Registry("attack")


@dataclasses.dataclass(frozen=True)
class EvaluationAttack:
    name: str
    about: str
    run: Callable
    norms: Tuple[str, ...] = tuple(THREATS)


def register(name, about, norms=tuple(THREATS)):
    def decorator(run):
        EVALUATION_ATTACKS.register(name)(EvaluationAttack(name, about, run, tuple(norms)))
        return run

    return decorator


def check(flag, names, norm=None, version="standard"):
    """ConfigError naming --flag when a name is unknown, the list is empty, an attack does not
    support the norm, or the names do not fit AutoAttack's --version (stage names are for
    --version=custom)."""
    unknown = [n for n in names if n not in EVALUATION_ATTACKS and n not in autoattack.STAGES]
    if unknown or not names:
        raise ConfigError(
            f"--{flag}: unknown {', '.join(unknown) or 'empty list'}; known: "
            f"{', '.join(EVALUATION_ATTACKS.names())} (and, with --version=custom, "
            f"the AutoAttack stages {', '.join(autoattack.STAGES)})"
        )
    autoattack.check(version, names, flag)
    if norm is not None:
        for name in autoattack.registered_attacks(names):
            attack = EVALUATION_ATTACKS.get(name)
            if norm not in attack.norms:
                raise ConfigError(f"--{flag}: {name} supports {', '.join(attack.norms)}, not {norm}")


@register("fgsm", "one signed-gradient step of size eps on the cross-entropy, no random start")
def _fgsm(attacker, x, y, clean_correct, plan, seed, log):
    return [
        attacker.gradient_attack(
            "fgsm",
            x,
            y,
            plan.norm,
            plan.eps,
            1,
            plan.eps,
            1,
            "ce",
            seed,
            random_start=False,
            clean_correct=clean_correct,
        )
    ]


@register("pgd", "PGD on the cross-entropy: --pgd_steps steps of 2.5 eps / steps from --pgd_restarts random starts")
def _pgd(attacker, x, y, clean_correct, plan, seed, log):
    return [
        attacker.gradient_attack(
            "pgd",
            x,
            y,
            plan.norm,
            plan.eps,
            plan.pgd_steps,
            plan.step_size,
            plan.pgd_restarts,
            "ce",
            seed,
            clean_correct=clean_correct,
        )
    ]


@register(
    "pgd-strong",
    "PGD with twice the steps at half the step size and two more restarts: accuracy must not rise above PGD's",
)
def _pgd_strong(attacker, x, y, clean_correct, plan, seed, log):
    return [
        attacker.gradient_attack(
            "pgd-strong",
            x,
            y,
            plan.norm,
            plan.eps,
            2 * plan.pgd_steps,
            plan.step_size / 2,
            plan.pgd_restarts + 2,
            "ce",
            seed + 1,
            clean_correct=clean_correct,
        )
    ]


@register("cw", "PGD on the CW margin loss (the literature's CW-Linf)")
def _cw(attacker, x, y, clean_correct, plan, seed, log):
    return [
        attacker.gradient_attack(
            "cw",
            x,
            y,
            plan.norm,
            plan.eps,
            plan.pgd_steps,
            plan.step_size,
            plan.pgd_restarts,
            "cw",
            seed,
            clean_correct=clean_correct,
        )
    ]


@register(
    "autoattack",
    "AutoAttack's cascade of --version (standard: APGD-CE, APGD-T, FAB-T, "
    "Square; plus; rand), each stage on the points still robust",
)
def _autoattack(attacker, x, y, clean_correct, plan, seed, log):
    return autoattack.run(attacker, x, y, plan.norm, plan.eps, plan.cascade(), seed, log)
