"""Robustness tests of a served model: clean agreement, white-box transfer, black-box Square.

`target` answers predictions (a RestClient on a server, or a SavedModelBackend in process); `local`
is the same export loaded in process (or a surrogate) whose `logits` signature white-box attacks
differentiate through. Work is cut into chunks of images; each finished chunk is appended to
<output_dir>/results.jsonl and fsynced, so a server that dies mid-run loses no finished result and
a rerun skips what is done.
"""

import json
import os

import numpy as np
import tensorflow as tf

from robustcl.attacks import OBJECTIVES, LinfBall, pgd
from robustcl.attacks.square import margins_of, square


class ResultStore:
    def __init__(self, path):
        self.path = path
        self.records = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut by a crash: that chunk is redone
                        self.records[(record["stage"], record["start"])] = record

    def done(self, stage, start):
        return (stage, start) in self.records

    def add(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[(record["stage"], record["start"])] = record

    def stage(self, name):
        return [r for (s, _), r in sorted(self.records.items(), key=lambda kv: kv[0][1]) if s == name]


def _white_box(local, x, y, eps, steps, seed):
    objective = OBJECTIVES.get("ce")
    loss_fn = lambda z: objective({"logits": local.logits_tf(z)}, tf.constant(y))  # noqa: E731
    return pgd(
        loss_fn, tf.constant(x), LinfBall(eps), steps, 2.5 * eps / steps, True, tf.constant([seed, 0], tf.int64)
    ).numpy()


def run(target, local, x, y, output_dir, eps=8 / 255, pgd_steps=20, square_queries=1000, chunk=32, seed=0, log=print):
    os.makedirs(output_dir, exist_ok=True)
    store = ResultStore(os.path.join(output_dir, "results.jsonl"))
    stages = ["clean"] + (["transfer"] if local is not None else []) + ["square"]
    for stage in stages:
        for start in range(0, len(x), chunk):
            if store.done(stage, start):
                continue
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            record = {"stage": stage, "start": start, "end": start + len(xs)}
            before = (target.queries, len(target.latencies))
            if stage == "clean":
                record["target_pred"] = np.argmax(target.predict(xs), -1).tolist()
                if local is not None:
                    local_logits = local.predict(xs)
                    record["local_pred"] = np.argmax(local_logits, -1).tolist()
                    record["max_logit_diff"] = float(np.abs(local_logits - target.predict(xs)).max())
            elif stage == "transfer":
                x_adv = _white_box(local, xs, ys, eps, pgd_steps, seed + start)
                quantized = np.clip(np.round(x_adv * 255), 0, 255).astype(np.uint8)
                record["local_adv_pred"] = np.argmax(local.predict(x_adv), -1).tolist()
                record["target_adv_pred"] = np.argmax(target.predict(x_adv), -1).tolist()
                record["target_uint8_pred"] = np.argmax(
                    target.predict(quantized, signature="serving_uint8"), -1
                ).tolist()
                record["uint8_linf"] = float(np.abs(quantized / 255.0 - xs).max())
            else:
                # A budget below AutoAttack's 5000: the p schedule is rescaled to it (the
                # reference class's default), so square sizes shrink within the budget.
                _, still, queries = square(
                    margins_of(target.predict),
                    xs,
                    ys,
                    LinfBall(eps),
                    square_queries,
                    0.8,
                    seed + start,
                    rescale_schedule=True,
                )
                record["robust"] = still.tolist()
                record["queries"] = queries.tolist()
            record["latencies"] = target.latencies[before[1] :]
            record["images_sent"] = target.queries - before[0]
            store.add(record)
            log(f"{stage}: images {start}..{start + len(xs)} done")
    report = summarize(store, y, eps, pgd_steps, square_queries, target)
    with open(os.path.join(output_dir, "serve_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output_dir, "serve_report.md"), "w") as f:
        f.write(markdown(report))
    return report


def _gather(records, key):
    return np.concatenate([np.asarray(r[key]) for r in records]) if records else np.zeros(0)


def summarize(store, y, eps, pgd_steps, square_queries, target):
    report = {"num_points": int(len(y)), "eps": float(eps), "norm": "linf"}
    clean = store.stage("clean")
    target_correct = _gather(clean, "target_pred") == y[: len(_gather(clean, "target_pred"))]
    report["clean_accuracy_target"] = float(target_correct.mean())
    if clean and "local_pred" in clean[0]:
        local_pred = _gather(clean, "local_pred")
        report["clean_accuracy_local"] = float((local_pred == y).mean())
        report["prediction_agreement"] = float((local_pred == _gather(clean, "target_pred")).mean())
        report["max_logit_diff"] = float(max(r["max_logit_diff"] for r in clean))
    transfer = store.stage("transfer")
    if transfer:
        report["transfer"] = {
            "attack": f"PGD-{pgd_steps} white-box on the local logits signature",
            "steps": pgd_steps,
            "local_robust_accuracy": float((target_correct & (_gather(transfer, "local_adv_pred") == y)).mean()),
            "target_robust_accuracy": float((target_correct & (_gather(transfer, "target_adv_pred") == y)).mean()),
            "target_robust_accuracy_uint8": float(
                (target_correct & (_gather(transfer, "target_uint8_pred") == y)).mean()
            ),
            "uint8_max_linf": float(max(r["uint8_linf"] for r in transfer)),
        }
    square_records = store.stage("square")
    if square_records:
        queries = _gather(square_records, "queries")
        square_robust = target_correct & _gather(square_records, "robust").astype(bool)
        report["square"] = {
            "attack": "Square L-inf through the target only",
            "query_budget": square_queries,
            "robust_accuracy": float(square_robust.mean()),
            "queries_mean": float(queries.mean()),
            "queries_median": float(np.median(queries)),
            "queries_total": int(queries.sum()),
        }
    latencies = (
        np.concatenate([np.asarray(r["latencies"]) for r in store.records.values()]) if store.records else np.zeros(0)
    )
    if latencies.size:
        report["latency_ms"] = {f"p{p}": float(np.percentile(latencies * 1000, p)) for p in (50, 90, 99)}
    report["requests"] = int(latencies.size)
    report["images_sent"] = int(sum(r["images_sent"] for r in store.records.values()))
    report["retried_this_run"] = int(getattr(target, "retried", 0))
    return report


def markdown(report):
    lines = [
        "# Robustness of the served model",
        "",
        f"{report['num_points']} points, L-inf eps {report['eps']:.5g}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| clean accuracy (target) | {report['clean_accuracy_target']:.4f} |",
    ]
    for key in ("clean_accuracy_local", "prediction_agreement", "max_logit_diff"):
        if key in report:
            lines.append(f"| {key.replace('_', ' ')} | {report[key]:.6g} |")
    for section in ("transfer", "square"):
        for key, value in report.get(section, {}).items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {section}: {key.replace('_', ' ')} | {shown} |")
    for key, value in report.get("latency_ms", {}).items():
        lines.append(f"| latency {key} (ms) | {value:.1f} |")
    lines += [
        f"| requests | {report['requests']} |",
        f"| images sent | {report['images_sent']} |",
        f"| retried (this run) | {report['retried_this_run']} |",
    ]
    return "\n".join(lines) + "\n"
