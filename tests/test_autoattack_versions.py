"""AutoAttack's versions: plus and rand with the reference's settings (counts scaled down only
through the flags' fields), custom cascades from --attacks, and a randomized model caught by rand."""

import keras
import pytest
import tensorflow as tf

from robustcl.settings import ConfigError
from robustcl.evaluation.settings import EvaluationConfig
from robustcl.evaluation import attacks as eval_attacks
from robustcl.evaluation import autoattack, evaluate
from robustcl.evaluation import report as report_module

EPS = 1 / 255  # the tiny model fitted to its batch: 2/255 breaks every point whatever the attack
CLASSES = [str(i) for i in range(10)]
SMALL = dict(
    eps=EPS, apgd_iterations=8, square_queries=10, sweep=False, progress=False, attacks=("autoattack",), batch_size=64
)


class RandomGradientSign(keras.layers.Layer):
    """Returns its input exactly, but each call multiplies each example's gradient by 3 or -1 at
    random (mean 1): a single gradient draw points the wrong way half the time, while the mean over
    draws (EOT) is the true gradient. A randomized defence whose outputs are deterministic."""

    def call(self, logits):
        sign = tf.sign(tf.random.uniform((tf.shape(logits)[0], 1), -1.0, 1.0))
        return logits + 2.0 * sign * (logits - tf.stop_gradient(logits))


@pytest.fixture(scope="module")
def randomized(undefended):
    network, x, y = undefended
    images = keras.Input(x.shape[1:])
    logits = RandomGradientSign()(network(images)["logits"])
    return keras.Model(images, {"logits": logits}, name="randomized"), x[:32], y[:32]


def _rows(report):
    return {a["attack"]: a for a in report["attacks"]}


def test_rand_breaks_a_randomized_model_that_standard_does_not(randomized):
    model, x, y = randomized
    standard = evaluate(model, x, y, CLASSES, version="standard", **SMALL)
    rand = evaluate(model, x, y, CLASSES, version="rand", **SMALL)
    assert [a["attack"] for a in rand["attacks"]] == ["apgd-ce", "apgd-dlr"]
    assert rand["autoattack"]["version"] == "rand" and "EOT 20" in rand["autoattack"]["settings"]
    # The same APGD-CE stage, with and without averaging the gradient over 20 draws.
    assert _rows(rand)["apgd-ce"]["robust_accuracy"] < _rows(standard)["apgd-ce"]["robust_accuracy"] - 0.2
    assert rand["autoattack"]["robust_accuracy"] < standard["autoattack"]["robust_accuracy"] - 0.2
    # Standard's preflight names the way out; rand, which averages the draws, does not warn.
    assert any("--version=rand" in w and "input gradients change" in w for w in standard["warnings"])
    assert not any("--version=rand" in w for w in rand["warnings"])


def test_plus_runs_its_six_stages_with_restarts_set_by_flags(undefended):
    network, x, y = undefended
    x, y = x[:32], y[:32]
    standard = evaluate(network, x, y, CLASSES, version="standard", **SMALL)
    plus = evaluate(network, x, y, CLASSES, version="plus", apgd_restarts=2, fab_restarts=2, **SMALL)
    rows = _rows(plus)
    assert list(rows) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert (
        rows["apgd-ce"]["restarts"],
        rows["apgd-dlr"]["restarts"],
        rows["fab"]["restarts"],
        rows["apgd-t"]["restarts"],
        rows["fab-t"]["restarts"],
    ) == (2, 2, 2, 1, 1)
    assert rows["apgd-ce"]["steps"] == 8 and rows["square"]["steps"] == 10
    after = [a["robust_accuracy"] for a in plus["attacks"]]
    assert after == sorted(after, reverse=True)  # a cascade: each stage only removes points
    assert plus["autoattack"]["robust_accuracy"] == after[-1] == plus["worst_case_robust_accuracy"]
    # Restart 0 of plus's APGD-CE is standard's APGD-CE (same seed); restart 1 only adds.
    assert rows["apgd-ce"]["robust_accuracy"] <= _rows(standard)["apgd-ce"]["robust_accuracy"]


def test_versions_carry_the_reference_settings():
    standard, plus, rand = (autoattack.resolve(v) for v in ("standard", "plus", "rand"))
    assert standard.stages == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert (standard.apgd_restarts, standard.eot_iterations, standard.square_queries) == (1, 1, 5000)
    assert plus.stages == ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
    assert (plus.apgd_restarts, plus.fab_restarts, plus.square_restarts) == (5, 5, 1)
    assert rand.stages == ("apgd-ce", "apgd-dlr") and rand.eot_iterations == 20
    assert autoattack.resolve("plus", apgd_restarts=2).apgd_restarts == 2
    assert autoattack.resolve("custom", ("fgsm", "square", "apgd-ce")).stages == ("square", "apgd-ce")


def test_custom_runs_the_listed_stages_in_order_beside_other_attacks(undefended):
    network, x, y = undefended
    report = evaluate(
        network, x[:32], y[:32], CLASSES, version="custom", **dict(SMALL, attacks=("fgsm", "square", "apgd-ce"))
    )
    assert [a["attack"] for a in report["attacks"]] == ["fgsm", "square", "apgd-ce"]
    assert report["autoattack"]["stages"] == ["square", "apgd-ce"]


@pytest.mark.parametrize(
    "version,attacks,message",
    [
        ("standard", ("pgd", "apgd-ce"), "apgd-ce are AutoAttack stages"),
        ("custom", ("pgd",), "name at least one of apgd-ce"),
        ("custom", ("apgd-ce", "autoattack"), "not 'autoattack'"),
        ("strong", ("autoattack",), "--version: unknown version 'strong'"),
        ("custom", ("apgd-x",), "unknown apgd-x"),
    ],
)
def test_versions_and_attacks_that_do_not_fit_are_refused(version, attacks, message):
    with pytest.raises(ConfigError, match=message):
        eval_attacks.check("attacks", attacks, "linf", version)


def test_negative_counts_are_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="eot_iterations"):
        EvaluationConfig(keras_model="m.keras", output_dir="out", eot_iterations=-1).validate()
    assert EvaluationConfig(keras_model="m.keras", output_dir="out").validate().version == "standard"


def test_every_stage_reports_the_points_it_attacked_and_its_model_and_own_seconds(undefended):
    """The report's time table: per stage, the points still robust when it started, its seconds,
    and of those the model's (forward and backward passes) and the attack's own."""
    network, x, y = undefended
    x, y = x[:32], y[:32]
    report = evaluate(network, x, y, CLASSES, version="standard", **SMALL)
    rows = _rows(report)
    before = sum(report["per_point"]["clean_correct"])
    for stage in ("apgd-ce", "apgd-t", "fab-t", "square"):
        row = rows[stage]
        assert row["points_attacked"] == before, stage
        assert 0.0 <= row["model_seconds"] <= row["seconds"] + 1e-3, (stage, row)
        assert row["attack_seconds"] == pytest.approx(row["seconds"] - row["model_seconds"], abs=2e-3)
        if before:  # every stage with points to attack runs the model
            assert row["model_seconds"] > 0.0, (stage, row)
        before = sum(report["per_point"]["robust"][stage])
    # A traced loop (PGD's) is all model time; APGD's whole run is traced too.
    assert rows["apgd-ce"]["model_seconds"] > 0.8 * rows["apgd-ce"]["seconds"], rows["apgd-ce"]
    table = report_module.markdown(report).split("Where the time went")[1]
    assert "| attack | points attacked | seconds | model | attack's own | model share |" in table
    for stage in ("apgd-ce", "apgd-t", "fab-t", "square"):
        assert f"| {stage} | {rows[stage]['points_attacked']} |" in table
