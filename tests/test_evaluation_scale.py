"""Evaluation at scale: chunks persisted as they finish, shards merged, devices of one machine,
resuming after a kill, refusing mixed settings; warnings that tell a difference from noise."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from robustcl import data
from robustcl.settings import ConfigError
from robustcl.evaluation.settings import EvaluationConfig
from robustcl.evaluation import checks
from robustcl.evaluation.engine import TIMING_FIELDS
from robustcl.evaluation.run import evaluate_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTS, CHUNK = 45, 15
BUDGET = dict(
    attacks=("fgsm", "pgd", "autoattack"),
    pgd_steps=3,
    apgd_iterations=4,
    square_queries=20,
    sweep=True,
    sweep_attack="fgsm",
    num_examples=POINTS,
    chunk_size=CHUNK,
    batch_size=15,
    projector_examples=0,
    download=False,
    dataset="cifar10",
)


@pytest.fixture(scope="module")
def fitted_model(synthetic_cifar10, tmp_path_factory):
    """A plain Keras MLP fitted to the first test points (so most are correct clean and the
    attacks have work to do), saved as a .keras file."""
    x, y = data.first_test_images(data.load_dataset("cifar10", synthetic_cifar10, download=False), POINTS)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=60, batch_size=20, verbose=0)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


def _config(model, data_dir, output_dir, **overrides):
    return EvaluationConfig(
        keras_model=model, data_dir=data_dir, output_dir=str(output_dir), **dict(BUDGET, **overrides)
    ).validate()


def _comparable(report):
    """The report without timings and paths: what must not depend on how the work was split."""
    rows = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in report["attacks"]]
    return {
        "attacks": rows,
        "per_point": report["per_point"],
        "eps_sweep": report["eps_sweep"],
        "clean": report["clean_accuracy"],
        "worst": report["worst_case_robust_accuracy"],
        "warnings": report["warnings"],
        "per_class": report["per_class"],
    }


@pytest.fixture(scope="module")
def single(fitted_model, synthetic_cifar10, tmp_path_factory):
    report, _ = evaluate_run(
        _config(fitted_model, synthetic_cifar10, tmp_path_factory.mktemp("single")), progress=False
    )
    return report


def test_single_process_report_is_made_of_chunks(single):
    assert single["num_points"] == POINTS and single["chunk_size"] == CHUNK
    assert 0.5 < single["clean_accuracy"] <= 1.0  # the model fits its points: the attacks have work
    names = [row["attack"] for row in single["attacks"]]
    assert names == ["fgsm", "pgd", "apgd-ce", "apgd-t", "fab-t", "square"]
    worst = np.array(single["per_point"]["worst_case_robust"])
    assert worst.mean() == pytest.approx(single["worst_case_robust_accuracy"])


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_merge_to_the_single_process_report(num_shards, single, fitted_model, synthetic_cifar10, tmp_path):
    for index in reversed(range(num_shards)):
        if index == 0:  # the merge before the last shard ran names the shard that is missing
            with pytest.raises(
                ConfigError,
                match=rf"shard 0 of {num_shards}: \d chunk\(s\) missing "
                r"\(first point 0\); run it with --shard_index=0",
            ):
                evaluate_run(_config(fitted_model, synthetic_cifar10, tmp_path, num_shards=num_shards), progress=False)
        report, _ = evaluate_run(
            _config(fitted_model, synthetic_cifar10, tmp_path, num_shards=num_shards, shard_index=index), progress=False
        )
        assert report is None  # a shard leaves the merge to the merge command
    merged, _ = evaluate_run(_config(fitted_model, synthetic_cifar10, tmp_path, num_shards=num_shards), progress=False)
    assert _comparable(merged) == _comparable(single)


def test_mirrored_over_two_devices_equals_one_device(single, fitted_model, synthetic_cifar10, tmp_path):
    mirrored, _ = evaluate_run(_config(fitted_model, synthetic_cifar10, tmp_path, strategy="mirrored"), progress=False)
    assert _comparable(mirrored) == _comparable(single)


def test_other_settings_are_refused_naming_them(single, fitted_model, synthetic_cifar10, tmp_path):
    evaluate_run(_config(fitted_model, synthetic_cifar10, tmp_path, attacks=("fgsm",), sweep=False), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(eps: 0.0313.* there, 0.0156.* now\)"):
        evaluate_run(
            _config(fitted_model, synthetic_cifar10, tmp_path, attacks=("fgsm",), sweep=False, eps=4 / 255),
            progress=False,
        )


@pytest.mark.slow
def test_killed_during_the_cascade_resumes_to_the_uninterrupted_report(
    single, fitted_model, synthetic_cifar10, tmp_path
):
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "evaluate.py"),
        f"--keras_model={fitted_model}",
        "--dataset=cifar10",
        f"--data_dir={synthetic_cifar10}",
        f"--output_dir={tmp_path}",
        "--attacks=fgsm,pgd,autoattack",
        "--pgd_steps=3",
        "--apgd_iterations=4",
        "--square_queries=20",
        "--sweep_attack=fgsm",
        f"--num_examples={POINTS}",
        f"--chunk_size={CHUNK}",
        "--batch_size=15",
        "--nodownload",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    chunks = tmp_path / "chunks"
    # Kill once the second chunk is inside the cascade: the first is on disk.
    output, second_chunk = [], False
    for line in process.stdout:
        output.append(line)
        second_chunk = second_chunk or line.startswith(f"chunk of points {CHUNK}..{2 * CHUNK - 1}")
        if second_chunk and "apgd-ce" in line and "points still robust" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(output)[-2000:]
    assert sorted(os.listdir(chunks)) == ["chunk_00000000.npz", "settings.json"]
    assert not (tmp_path / "report.json").exists()
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 of 3 chunks already done" in resumed.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert _comparable(report) == _comparable(single)


class _Verdicts:
    def __init__(self, robust):
        self.robust = np.asarray(robust, bool)
        self.seconds = 1.0


def test_attack_ordering_warnings_need_more_than_noise():
    base = np.ones(100, bool)
    pgd = base.copy()
    pgd[:40] = False
    one_better = pgd.copy()
    one_better[40] = False  # FGSM breaks 1 point PGD leaves robust, 1 point in 100
    assert checks.warn_attack_ordering({"fgsm": _Verdicts(one_better), "pgd": _Verdicts(pgd)}, []) == []
    much_better = pgd.copy()
    much_better[40:48] = False  # 8 points to 0: p = 0.0039
    [message] = checks.warn_attack_ordering({"fgsm": _Verdicts(much_better), "pgd": _Verdicts(pgd)}, [])
    assert "FGSM breaks 8 points PGD leaves robust, PGD 0 the other way (sign test p = 0.0039)" in message
    strong = pgd.copy()
    strong[:5] = True  # the stronger PGD leaves 5 points robust that PGD broke: p = 0.031, noise
    assert checks.warn_attack_ordering({"pgd": _Verdicts(pgd), "pgd-strong": _Verdicts(strong)}, []) == []
    assert checks.one_sided_sign_test(7, 0) == pytest.approx(1 / 128)
    assert checks.one_sided_sign_test(0, 0) == 1.0


def test_transfer_rows_from_a_surrogate(single, fitted_model, synthetic_cifar10, tmp_path):
    # The model as its own surrogate: transfer-PGD is the white-box PGD, draw for draw.
    report, _ = evaluate_run(
        _config(fitted_model, synthetic_cifar10, tmp_path / "self", transfer_from=fitted_model), progress=False
    )
    rows = {row["attack"]: row for row in report["attacks"]}
    assert rows["transfer-pgd"]["robust_accuracy"] == rows["pgd"]["robust_accuracy"]
    assert "transfer-apgd-ce" in rows and report["transfer_from"].startswith(fitted_model)
    # Not in the worst case unless asked: the worst case is the one without them.
    # Per point as well: every attack's verdicts and the worst case; the transfer rows come beside.
    for key in ("clean_correct", "worst_case_robust"):
        assert report["per_point"][key] == single["per_point"][key]
    for name, verdicts in single["per_point"]["robust"].items():
        assert report["per_point"]["robust"][name] == verdicts, name
    assert set(report["per_point"]["robust"]) - set(single["per_point"]["robust"]) == {
        "transfer-pgd",
        "transfer-apgd-ce",
    }
    assert "not counted in the worst case" in (tmp_path / "self" / "report.md").read_text()
    # Another network as surrogate (an untrained one: its examples transfer poorly).
    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    other.save(tmp_path / "other.keras")
    counted, _ = evaluate_run(
        _config(
            fitted_model,
            synthetic_cifar10,
            tmp_path / "other",
            transfer_from=str(tmp_path / "other.keras"),
            transfer_in_worst_case=True,
        ),
        progress=False,
    )
    rows = {row["attack"]: row for row in counted["attacks"]}
    assert rows["transfer-pgd"]["robust_accuracy"] >= rows["pgd"]["robust_accuracy"]
    assert counted["worst_case_robust_accuracy"] <= single["worst_case_robust_accuracy"]


def test_sweep_warnings_need_more_than_noise():
    """Two budgets 1 point apart in 100 are noise; a rise on many points, or accuracy above chance
    at eps 0.5 by more than a binomial draw, is not."""
    at_small = np.zeros(100, bool)
    at_small[:30] = True
    one_more = at_small.copy()
    one_more[30] = True  # robust at the larger eps only: 1 point to 0, p = 0.5
    sweep = [{"eps": 4 / 255, "robust": at_small}, {"eps": 8 / 255, "robust": one_more}]
    for point in sweep:  # as the report's eps_sweep rows carry them too
        point["robust_accuracy"] = float(point["robust"].mean())
    assert checks.warn_sweep(sweep, 10, "linf") == []
    many_more = at_small.copy()
    many_more[30:40] = True  # 10 points to 0: p = 0.001
    [message] = checks.warn_sweep([sweep[0], {"eps": 8 / 255, "robust": many_more}], 10, "linf")
    assert "accuracy rises with eps" in message and "10 points robust only at the larger eps" in message
    # At eps 0.5 on 100 points of 10 classes: 12 robust is within chance (p = 0.30), 25 is not.
    twelve, twenty_five = np.arange(100) < 12, np.arange(100) < 25
    assert checks.warn_sweep([{"eps": 0.5, "robust": twelve}], 10, "linf") == []
    [message] = checks.warn_sweep([{"eps": 0.5, "robust": twenty_five}], 10, "linf")
    assert "above chance" in message


def test_square_beating_white_box_needs_more_than_noise():
    white = np.ones(100, bool)
    white[:50] = False
    square = white.copy()
    square[50] = False  # Square breaks 1 point of 100 every white-box attack left robust: p = 0.18
    found = checks.warn_attack_ordering({"pgd": _Verdicts(white), "square": _Verdicts(square)}, ["pgd"])
    assert found == []
    square[50:53] = False  # 3 of 100: p = 0.001
    [message] = checks.warn_attack_ordering({"pgd": _Verdicts(white), "square": _Verdicts(square)}, ["pgd"])
    assert "Square (black-box) breaks 3 of 100 points" in message
