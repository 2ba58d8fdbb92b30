"""Projector data: a real TensorBoard serves what a smoke run wrote; embedding statistics by hand."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from robustcl.embeddings import embedding_space_stats
from tests.cifar_files import write_official
from robustcl.net import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_embedding_space_stats_by_hand():
    clean = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -1.0]])
    adversarial = np.array([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    stats = embedding_space_stats(clean, adversarial, labels)
    # clean/adv: cos 1/sqrt(2), 1, -1, 0 (zero vector) -> mean (0.7071 + 1 - 1 + 0) / 4
    assert stats["clean_adv_cosine"] == pytest.approx((2**-0.5) / 4)
    # same class pairs: (0,2) cos 1, (1,3) cos -1 -> intra 0; cross pairs all orthogonal -> inter 0
    assert stats["intra_class_cosine"] == pytest.approx(0.0)
    assert stats["inter_class_cosine"] == pytest.approx(0.0)
    labels = np.array([0, 0, 0, 1])
    stats = embedding_space_stats(clean, adversarial, labels)
    # class 0 pairs: (0,1) 0, (0,2) 1, (1,2) 0 -> 1/3; inter: (0,3) 0, (1,3) -1, (2,3) 0 -> -1/3
    assert stats["intra_class_cosine"] == pytest.approx(1 / 3)
    assert stats["inter_class_cosine"] == pytest.approx(-1 / 3)
    assert stats["margin"] == pytest.approx(2 / 3)
    assert np.isnan(embedding_space_stats(clean[:2], adversarial[:2], [0, 1])["intra_class_cosine"])


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("projector_run")
    data_dir, _, _ = write_official(str(root / "data"), "cifar10", per_file=60)
    model_dir = root / "run"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "train.py"),
            "--flagfile=configs/morel_cifar10.flags",
            "--flagfile=configs/smoke.flags",
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            "--projector_examples=40",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


@pytest.mark.slow
def test_tensorboard_serves_the_projector_data_of_a_smoke_run(smoke_run):
    run_dir = smoke_run / "projector"
    assert (run_dir / "projection_epoch_002.png").exists()
    port = free_ports()[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={smoke_run}", "--host=127.0.0.1", f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/projector"
    try:
        deadline = time.time() + 90
        runs = None
        while time.time() < deadline:
            assert server.poll() is None, server.stdout.read().decode()[-2000:]
            try:
                runs = json.loads(_get(f"{base}/runs"))
                if "projector" in runs:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert runs is not None and "projector" in runs, runs

        info = json.loads(_get(f"{base}/info?run=projector"))
        names = [e["tensorName"] for e in info["embeddings"]]
        assert names == ["epoch_001/.ATTRIBUTES/VARIABLE_VALUE", "epoch_002/.ATTRIBUTES/VARIABLE_VALUE"]
        shape = [int(d) for d in info["embeddings"][1]["tensorShape"]]
        assert shape == [80, 128]  # 2N rows (clean + adversarial), the 128-d MOREL embedding

        name = urllib.parse.quote(names[1])
        tensor = np.frombuffer(_get(f"{base}/tensor?run=projector&name={name}"), np.float32)
        assert tensor.size == 80 * 128 and np.isfinite(tensor).all()

        metadata = _get(f"{base}/metadata?run=projector&name={name}").decode().splitlines()
        assert metadata[0].split("\t") == ["class", "label", "view", "predicted", "correct", "index"]
        assert len(metadata) == 81
        views = [row.split("\t")[2] for row in metadata[1:]]
        assert views == ["clean"] * 40 + ["adversarial"] * 40

        sprite = _get(f"{base}/sprite_image?run=projector&name={name}")
        assert sprite[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode is not None


@pytest.mark.slow
def test_evaluate_script_writes_reports_and_projector_data(smoke_run, tmp_path):
    data_dir = smoke_run.parent / "data"
    output_dir = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "evaluate.py"),
            f"--model_dir={smoke_run}",
            "--checkpoint=last",
            f"--data_dir={data_dir}",
            "--num_examples=24",
            "--pgd_steps=3",
            "--apgd_iterations=5",
            "--square_queries=20",
            f"--output_dir={output_dir}",
            "--projector_examples=12",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worst-case robust accuracy" in result.stdout
    report = json.load(open(output_dir / "report.json"))
    assert report["num_points"] == 24
    names = [a["attack"] for a in report["attacks"]]
    assert names == ["fgsm", "pgd", "pgd-strong", "cw", "apgd-ce", "apgd-t", "fab-t", "square"]
    for row in report["attacks"]:
        assert {
            "robust_accuracy",
            "eps",
            "norm",
            "steps",
            "restarts",
            "seed",
            "seconds",
            "max_perturbation",
            "nan_count",
            "adv_min",
            "adv_max",
        } <= set(row)
        assert row["robust_accuracy"] <= report["clean_accuracy"]
    assert report["worst_case_robust_accuracy"] <= min(a["robust_accuracy"] for a in report["attacks"])
    assert any(p["eps"] == 0.5 for p in report["eps_sweep"])
    for name in ("report.md", "accuracy_vs_eps.png", "per_class_accuracy.png"):
        assert (output_dir / name).exists(), name
    assert list((smoke_run / "evaluation").glob("events.out.tfevents.*"))
    config = (smoke_run / "projector" / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test_last/.ATTRIBUTES/VARIABLE_VALUE"' in config
    assert 'tensor_name: "epoch_002/.ATTRIBUTES/VARIABLE_VALUE"' in config  # training's are kept

    bad = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "evaluate.py"),
            f"--model_dir={smoke_run}",
            "--attacks=pgd,deepfool",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "--attacks: unknown deepfool" in bad.stderr


@pytest.mark.slow
def test_export_script_and_evaluating_the_export(smoke_run, tmp_path):
    export = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "export.py"),
            f"--model_dir={smoke_run}",
            f"--export_dir={tmp_path / 'models'}",
            "--model_name=smoke",
            "--checkpoint=last",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    path = export.stdout.strip().splitlines()[-1]
    assert path.endswith(os.path.join("models", "smoke", "1"))
    assets = set(os.listdir(os.path.join(path, "assets.extra")))
    assert assets - {"report.json"} == {"class_names.json", "config.json", "dataset.json"}
    output_dir = tmp_path / "export_report"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "evaluate.py"),
            f"--saved_model={path}",
            f"--data_dir={smoke_run.parent / 'data'}",
            "--num_examples=16",
            "--pgd_steps=2",
            "--apgd_iterations=3",
            "--square_queries=10",
            "--attacks=fgsm,pgd,autoattack",
            "--sweep_attack=fgsm",
            "--norm=l2",
            "--eps=0.5",
            f"--output_dir={output_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(output_dir / "report.json"))
    assert report["model"] == f"{path} (signature logits, images -> logits)"
    assert report["sweep_attack"] == "fgsm"
    assert [a["attack"] for a in report["attacks"]] == ["fgsm", "pgd", "apgd-ce", "apgd-t", "fab-t", "square"]
    for row in report["attacks"]:  # the whole L2 cascade ran, inside the L2 ball
        assert row["norm"] == "l2" and row["eps"] == 0.5, row
        assert row["max_perturbation"] <= 0.5 * (1 + 1e-5)
    missing = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), f"--saved_model={path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "--output_dir: is required with --saved_model" in missing.stderr


def test_thumbnails_keep_the_sprite_within_the_projector_limit():
    from robustcl.embeddings.projector import SPRITE_MAX_SIDE, thumbnail_side, thumbnails_of

    small = np.random.default_rng(0).uniform(size=(5, 32, 32, 3))
    np.testing.assert_array_equal(thumbnails_of(small), np.round(small * 255).astype(np.uint8))
    large = np.full((3, 224, 160, 3), 0.5)
    assert thumbnails_of(large).shape == (3, 64, 46, 3)
    assert thumbnail_side(1000) == 64  # 2000 thumbnails, 45 per row: 2880 px
    assert thumbnail_side(9000) == 60 and 60 * 135 <= SPRITE_MAX_SIDE  # 18,000: 135 per row
