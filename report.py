"""Turn a folder of runs into the experiment table, with the statistics single runs hide.

    python report.py RUNS_DIR [--baseline RUN_NAME] [--plot]

Writes RUNS_DIR/results.md and RUNS_DIR/results.csv and prints the markdown:
- one row per setting; runs that differ only in --seed are one row, mean ± std over n seeds;
- Δ test_acc against the model's baseline row (default settings, or --baseline) with a 95% CI
  from a bootstrap over both sources of chance: each row's seeds (training randomness) and the
  shared test examples (paired); * marks rows whose CI excludes 0, never a row compared with
  fewer than 3 seeds on a side (marked †: with one seed the CI cannot see training randomness,
  with two it is too narrow);
- collapsed runs (accuracy at the majority rate, loss at or above ln K) flagged, never bolded;
- test accuracy by review length in tokens, so the effect of max_len / truncation is visible.
Regression runs (--task regression) get a table of their own: Pearson, Spearman and MSE, Δ test
Pearson with the same seed-and-example bootstrap; no calibration, collapse or length columns.
Masked-LM pretraining runs (--task mlm) get a table of their own too: validation masked-token loss,
accuracy and perplexity, mean ± std over seeds; they have no test split, so no Δ column.
"""

import argparse
import csv
import json
import math
import os
import sys

import numpy as np

import config as settings
import metrics

BUCKETS = [(0, 128, "≤128"), (129, 256, "129–256"), (257, 512, "257–512"), (513, math.inf, ">512")]
COLUMNS = [("val_acc", max), ("test_acc", max), ("test_loss", min), ("test_ece", min)]
REGRESSION_COLUMNS = [("val_pearson", max), ("test_pearson", max), ("test_spearman", max), ("test_mse", min)]
MLM_COLUMNS = [("val_loss", min), ("val_acc", max), ("val_perplexity", min)]
COLUMNS_OF = {"classification": COLUMNS, "regression": REGRESSION_COLUMNS, "mlm": MLM_COLUMNS}
COMPARED = {"classification": "test_acc", "regression": "test_pearson"}  # the Δ column's metric; mlm has none
TITLES = {"regression": "Regression runs:", "mlm": "Masked-LM pretraining runs (validation, masked tokens):"}
BOOTSTRAP_SAMPLES = 2000
MIN_SEEDS_FOR_STAR = 3  # per side; see seed_and_example_bootstrap


class ReportError(Exception):
    pass


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def load_runs(runs_dir: str) -> list[dict]:
    """Every finished run folder; one that cannot be read is named in a warning and skipped."""
    if not os.path.isdir(runs_dir):
        raise ReportError(f"{runs_dir} is not a folder")
    runs = []
    for name in sorted(os.listdir(runs_dir)):
        folder = os.path.join(runs_dir, name)
        paths = [os.path.join(folder, f) for f in ("results.json", "config.json", "test_predictions.npz")]
        pretraining = _task_of(paths[1]) == "mlm"  # no test split: no predictions file
        if (
            name == "smoke"
            or not settings.has_results(folder)
            or not all(os.path.exists(p) for p in paths[1 : 2 if pretraining else 3])
        ):
            continue
        try:
            runs.append(read_run(name, *paths))
        except ReportError as e:
            print(f"warning: skipped {folder}: {e}", file=sys.stderr)
    if not runs:
        raise ReportError(f"no finished runs (folders with results.json) in {runs_dir}")
    return runs


def _task_of(config_path: str) -> str | None:
    try:
        config = _read_json(config_path)
    except (OSError, ValueError):
        return None  # read_run says what is wrong with it
    return config.get("task", "classification") if isinstance(config, dict) else None


def read_run(name: str, results_path: str, config_path: str, predictions_path: str) -> dict:
    config = _read_json_object(config_path, ["model", "pool", "seed"])
    task = config.get("task", "classification")
    if task not in COLUMNS_OF:
        raise ReportError(f"config.json: task {task!r} has no table here")
    columns = [col for col, _ in COLUMNS_OF[task]]
    results = _read_json_object(results_path, columns)
    not_numbers = [
        col for col in columns if isinstance(results[col], bool) or not isinstance(results[col], (int, float))
    ]
    if not_numbers:
        raise ReportError(f"results.json: {', '.join(not_numbers)} not a number")
    if task == "mlm":
        return {"name": name, "task": task, "results": results, "config": config}
    output = "probs" if task == "classification" else "predictions"
    try:
        with np.load(predictions_path) as preds:
            outputs, labels, n_tokens = preds[output], preds["labels"], preds["n_tokens"]
    except Exception as e:  # zip, pickle, key and type errors: numpy raises many kinds
        raise ReportError(f"test_predictions.npz is unreadable ({type(e).__name__})") from None
    if (
        outputs.ndim != (2 if output == "probs" else 1)
        or labels.shape != (len(outputs),)
        or n_tokens.shape != (len(outputs),)
    ):
        raise ReportError(f"test_predictions.npz: {output}, labels and n_tokens do not match in shape")
    return {
        "name": name,
        "task": task,
        "results": results,
        "config": config,
        output: outputs,
        "labels": labels,
        "n_tokens": n_tokens,
    }


def _read_json_object(path: str, keys: list[str]) -> dict:
    """A JSON object holding `keys`, or a ReportError saying what is wrong with the file."""
    file_name = os.path.basename(path)
    try:
        obj = _read_json(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"{file_name} is unreadable ({e})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{file_name} is not a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ReportError(f"{file_name} has no {', '.join(missing)}")
    return obj


def settings_of(config: dict) -> dict:
    """{setting: label} for the settings that differ from train.py's defaults (pool always shown;
    seed and model aside), labelled as in run names."""
    # config.json holds the resolved lr; its default depends on the model, which train.py recorded
    defaults = dict(settings.DEFAULTS, lr=config.get("model_default_lr", 5e-5))
    start = settings.model_run(config["model"])
    pool = {} if config.get("task") == "mlm" else {"pool": config["pool"]}  # no head to pool for
    return {**pool, **({"start": f"from {start}"} if start else {}), **settings.setting_labels(config, defaults)}


def model_of(config: dict, configs: dict[str, dict]) -> str:
    """The model column: --model's name; for run:NAME (a run that starts from pretraining run
    NAME of the same folder) the model NAME started from, so it compares with runs from that
    model (its setup says "from NAME")."""
    model, seen = config["model"], set()
    while settings.model_run(model) is not None and model not in seen:
        seen.add(model)
        model = configs.get(settings.model_run(model), {}).get("model", model)
    return os.path.basename(os.path.normpath(model))


def is_collapsed(run: dict) -> bool:
    if run["task"] != "classification":
        return False
    if run["results"].get("collapsed"):
        return True
    labels, k = run["labels"], run["probs"].shape[1]
    majority = np.bincount(labels, minlength=k).max() / len(labels)
    test = {"acc": run["results"]["test_acc"], "loss": run["results"]["test_loss"]}
    return metrics.is_collapsed([test], majority, k)


def build_rows(runs: list[dict]) -> tuple[list[dict], str]:
    """Rows of runs that differ only in seed, and the settings every row shares."""
    settings = [settings_of(run["config"]) for run in runs]
    # what the compared runs share; a pretraining stage's runs (mlm) do not narrow it
    compared = [s for run, s in zip(runs, settings, strict=True) if run["task"] != "mlm"] or settings
    common = {k: v for k, v in compared[0].items() if k != "pool" and all(s.get(k) == v for s in compared)}
    configs = {run["name"]: run["config"] for run in runs}
    groups = {}
    for run, shown in zip(runs, settings, strict=True):
        # a pretraining run shows all its settings: `common` is what the compared runs share
        setup = ", ".join(v for k, v in shown.items() if k not in common or run["task"] == "mlm")
        key = (run["task"], model_of(run["config"], configs), setup)
        groups.setdefault(key, []).append(run)
    rows = []
    for (task, model_name, setup), group in sorted(groups.items()):
        # runs of one seed (e.g. with 1 and 2 processes) are not independent samples: the first
        # (by name) counts, the others are listed
        by_seed = {}
        for run in group:
            by_seed.setdefault(run["config"]["seed"], []).append(run)
        members = [same_seed[0] for same_seed in by_seed.values()]
        row = {
            "task": task,
            "model": model_name,
            "setup": setup,
            "n": len(members),
            "runs": members,
            "collapsed": any(is_collapsed(r) for r in members),
            "names": [r["name"] for r in group],
            "duplicate_seeds": [
                (seed, [r["name"] for r in same_seed]) for seed, same_seed in by_seed.items() if len(same_seed) > 1
            ],
        }
        for col, _ in COLUMNS_OF[task]:
            values = np.array([r["results"][col] for r in members], dtype=float)
            row[col] = values.mean()
            row[col + "_std"] = values.std(ddof=1) if len(values) > 1 else None  # no spread from one seed
        if task not in COMPARED:  # mlm: validation figures only, nothing per example to compare
            row["buckets"] = None
            rows.append(row)
            continue
        if task == "regression":  # per-example predictions, one row per seed, for the bootstrap
            row["prediction_runs"] = np.array([r["predictions"] for r in members], dtype=float)
            row["correct"], row["buckets"] = row["prediction_runs"][0], None  # `correct`: the example count
            rows.append(row)
            continue
        # per-example correctness, one row per seed: the bootstrap resamples seeds and examples
        row["correct_runs"] = np.array([r["probs"].argmax(1) == r["labels"] for r in members], dtype=float)
        row["correct"] = row["correct_runs"].mean(0)
        row["n_tokens"] = members[0]["n_tokens"]
        row["buckets"] = bucket_accuracy(row["correct"], row["n_tokens"])
        rows.append(row)
    return rows, ", ".join(common.values())


def bucket_accuracy(correct: np.ndarray, n_tokens: np.ndarray) -> dict:
    out = {}
    for low, high, label in BUCKETS:
        mask = (n_tokens >= low) & (n_tokens <= high)
        out[label] = (float(correct[mask].mean()), int(mask.sum())) if mask.any() else (None, 0)
    return out


def seed_and_example_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean test accuracy of a minus b and its 95% percentile CI. Inputs: per-example correctness,
    one row per seed, over the same test examples. Each replicate resamples each side's seeds
    (seed-to-seed spread is often larger than test-set noise) and then the examples, the same
    examples for both sides (paired). With one seed a side, only the examples vary. In a
    simulation with no true difference (seed sd 5 points, 500 examples, 200 trials each) the
    interval held 0 in 90% of trials with 2 seeds a side and 93-94% with 3, 5 and 7."""
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def resampled_seeds(runs):
        # the mean of k resampled seeds varies (k-1)/k as much as the mean of k new seeds would:
        # stretched back, or 3 seeds would give a CI a fifth too narrow
        mean = runs.mean(0)
        stretch = np.sqrt(len(runs) / (len(runs) - 1)) if len(runs) > 1 else 0.0
        return mean + stretch * (runs[rng.integers(0, len(runs), len(runs))].mean(0) - mean)

    means = np.empty(samples)
    for i in range(samples):
        means[i] = (resampled_seeds(a) - resampled_seeds(b))[rng.integers(0, n, n)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def seed_and_example_bootstrap_of(
    metric,
    outputs_a: np.ndarray,
    outputs_b: np.ndarray,
    labels: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """seed_and_example_bootstrap for a metric that is not a mean over examples (Pearson): each
    replicate resamples the shared examples (paired), scores every seed on them, then resamples
    each side's seeds with the same stretch. Inputs: per-example outputs, one row per seed."""
    a, b = np.asarray(outputs_a, float), np.asarray(outputs_b, float)
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def resampled_seeds(scores):
        mean = scores.mean()
        stretch = np.sqrt(len(scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
        return mean + stretch * (scores[rng.integers(0, len(scores), len(scores))].mean() - mean)

    differences = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        scores_a, scores_b = (np.array([metric(run[idx], labels[idx]) for run in side]) for side in (a, b))
        differences[i] = resampled_seeds(scores_a) - resampled_seeds(scores_b)
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    mean_a, mean_b = (np.mean([metric(run, labels) for run in side]) for side in (a, b))
    return float(mean_a - mean_b), float(low), float(high)


def add_significance(rows: list[dict], baseline: str | None) -> None:
    for task, model_name in {(r["task"], r["model"]) for r in rows}:
        group = [r for r in rows if r["task"] == task and r["model"] == model_name]
        if task not in COMPARED:
            for row in group:
                row["is_baseline"], row["delta"] = False, None
            continue
        if baseline:
            base = next((r for r in group if baseline in r["names"] or r["setup"] == baseline), None)
        else:
            # default settings: the setup shows the pool alone (settings_of always shows it)
            base = next((r for r in group if r["setup"] == settings.DEFAULTS["pool"]), None)
        for row in group:
            row["is_baseline"] = row is base
            row["delta"] = None
            if base is None or row is base or len(row["correct"]) != len(base["correct"]):
                continue
            if not np.array_equal(row["runs"][0]["labels"], base["runs"][0]["labels"]):
                continue  # not the same test examples: no paired comparison
            if task == "regression":
                row["delta"] = seed_and_example_bootstrap_of(
                    metrics.pearson, row["prediction_runs"], base["prediction_runs"], base["runs"][0]["labels"]
                )
            else:
                row["delta"] = seed_and_example_bootstrap(row["correct_runs"], base["correct_runs"])
            row["few_seeds"] = min(row["n"], base["n"]) < MIN_SEEDS_FOR_STAR


def render(rows: list[dict], common: str) -> tuple[str, list[dict]]:
    """The markdown (one table per task, the length buckets of the classification rows) and the
    CSV rows."""
    lines, table = [], []
    for task in COLUMNS_OF:
        task_rows = [r for r in rows if r["task"] == task]
        if task_rows:
            if lines:
                lines += ["", TITLES[task], ""]
            lines += task_table(task_rows, task, table)
    duplicates = [(row, seed, names) for row in rows for seed, names in row["duplicate_seeds"]]
    if duplicates:
        lines += [
            "",
            "‡ = runs with the same settings and seed (e.g. with 1 and 2 processes) are not independent: "
            "each seed counts once, the first run by name. "
            + "; ".join(
                f"{row['model']} {row['setup']}, seed {seed}: counted {names[0]}, not {', '.join(names[1:])}"
                for row, seed, names in duplicates
            )
            + ".",
        ]
    classified = [r for r in rows if r["task"] == "classification"]
    if classified:
        lines += ["", "Test accuracy by review length in tokens (examples per bucket in the header):", ""]
        counts = classified[0]["buckets"]
        lines.append(
            "| model | setup | " + " | ".join(f"{label} (n={counts[label][1]})" for _, _, label in BUCKETS) + " |"
        )
        lines.append("|---|---|" + "---:|" * len(BUCKETS))
        for row in _ordered(classified):
            cells = [
                f"{row['buckets'][label][0]:.4f}" if row["buckets"][label][0] is not None else "–"
                for _, _, label in BUCKETS
            ]
            lines.append(f"| {row['model']} | {row['setup']} | " + " | ".join(cells) + " |")
    rows_sharing = "fine-tuning row" if any(r["task"] == "mlm" for r in rows) else "row"
    lines += [
        "",
        f"Shared by every {rows_sharing}: {common or 'nothing beyond the defaults'}. ± is the std over "
        "seeds (n). The 95% CI resamples seeds and test examples; * = it excludes 0. † = fewer than "
        f"{MIN_SEEDS_FOR_STAR} seeds on a side: the CI sees training randomness poorly (2) or not at all "
        "(1), so it cannot support a conclusion (no *). Bold = best of its model, collapsed rows excluded.",
    ]
    return "\n".join(lines) + "\n", table


def task_table(rows: list[dict], task: str, table: list[dict]) -> list[str]:
    """The markdown lines of one task's table; its CSV rows are appended to `table`."""
    columns, compared = COLUMNS_OF[task], COMPARED.get(task)
    best = {}
    for model_name in {r["model"] for r in rows}:
        ranked = [r for r in rows if r["model"] == model_name and not r["collapsed"]]
        for col, pick in columns:
            if ranked:
                best[(model_name, col)] = pick(r[col] for r in ranked)
    delta_header = f" Δ {compared} vs baseline [95% CI] |" if compared else ""
    lines = [
        "| model | setup | " + " | ".join(col for col, _ in columns) + f" | n |{delta_header}",
        "|---|---|" + "---:|" * len(columns) + "---:|" + ("---|" if compared else ""),
    ]
    for row in _ordered(rows):
        cells = []
        for col, _ in columns:
            text = f"{row[col]:.4f}" + (f" ± {row[col + '_std']:.4f}" if row["n"] > 1 else "")
            if not row["collapsed"] and math.isclose(row[col], best.get((row["model"], col), math.nan)):
                text = f"**{text}**"
            cells.append(text)
        if row.get("is_baseline"):
            delta = "baseline"
        elif row["delta"] is None:
            delta = "–"
        else:
            d, low, high = row["delta"]
            delta = f"{d:+.4f} [{low:+.4f}, {high:+.4f}]"
            delta += " †" if row["few_seeds"] else (" *" if low > 0 or high < 0 else "")
        setup = row["setup"] + (" — COLLAPSED, not a result" if row["collapsed"] else "")
        n = f"{row['n']} ‡" if row["duplicate_seeds"] else str(row["n"])
        lines.append(
            f"| {row['model']} | {setup} | " + " | ".join(cells) + f" | {n} |" + (f" {delta} |" if compared else "")
        )
        csv_row = {
            "model": row["model"],
            "setup": setup,
            "n": row["n"],
            **{c: row[c] for c, _ in columns},
            **{c + "_std": "" if row[c + "_std"] is None else row[c + "_std"] for c, _ in columns},
            **(
                {
                    f"delta_{compared}": row["delta"][0] if row["delta"] else "",
                    "ci_low": row["delta"][1] if row["delta"] else "",
                    "ci_high": row["delta"][2] if row["delta"] else "",
                    "ci_few_seeds": row["few_seeds"] if row["delta"] else "",
                }
                if compared
                else {}
            ),
            "collapsed": row["collapsed"],
            "runs": " ".join(row["names"]),
            "duplicate_seed_runs": " ".join(name for _, names in row["duplicate_seeds"] for name in names[1:]),
        }
        if row["buckets"] is not None:
            csv_row.update({f"acc_len_{label}": row["buckets"][label][0] for _, _, label in BUCKETS})
        table.append(csv_row if task == "classification" else {"task": task, **csv_row})
    return lines


def plot(rows: list[dict], out_dir: str, say=print) -> list[str]:
    """test_acc.png, and acc_by_length.png unless every test example is in one length bucket;
    returns the paths written."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install matplotlib (it is in requirements.txt)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["task"] == "classification"]  # the figures plot accuracy
    if not rows:
        say("no plots: they show classification runs' accuracy, and there are none")
        return []
    figures = {"test_acc.png": accuracy_figure(rows, plt), "acc_by_length.png": length_figure(rows, plt)}
    paths = []
    for file_name, fig in figures.items():
        if fig is None:
            say(f"{file_name} not written: every test example falls in one length bucket")
            continue
        paths.append(os.path.join(out_dir, file_name))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["model"], not r.get("is_baseline"), r["setup"]))


def accuracy_figure(rows: list[dict], plt):
    """Test accuracy per row; on each compared row the 95% CI of its Δ vs the baseline, placed
    around its own accuracy. † marks comparisons with too few seeds, as in the table."""
    ordered = _ordered(rows)
    labels = [f"{r['model']}\n{r['setup']}" + (" †" if r["delta"] and r["few_seeds"] else "") for r in ordered]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    acc = np.array([r["test_acc"] for r in ordered])
    ax.bar(range(len(ordered)), acc, color=["lightgray" if r["collapsed"] else "tab:blue" for r in ordered])
    compared = [i for i, r in enumerate(ordered) if r["delta"]]
    low = np.array([ordered[i]["delta"][0] - ordered[i]["delta"][1] for i in compared])
    high = np.array([ordered[i]["delta"][2] - ordered[i]["delta"][0] for i in compared])
    if compared:
        ax.errorbar(compared, acc[compared], yerr=[low, high], fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(range(len(ordered)), labels, fontsize=7)
    ax.set_ylabel("test accuracy (error bars: 95% CI of Δ vs baseline)")
    if any(r["delta"] and r["few_seeds"] for r in ordered):
        ax.set_title(f"† fewer than {MIN_SEEDS_FOR_STAR} seeds on a side: the CI supports no conclusion", fontsize=8)
    bottom = min([*acc, *(acc[compared] - low)])
    top = max([*acc, *(acc[compared] + high)])
    ax.set_ylim(max(0, bottom - 0.05), top + 0.05)  # a CI reaching past 1.0 is drawn whole
    fig.tight_layout()
    return fig


def length_figure(rows: list[dict], plt):
    """Test accuracy per length bucket, one line per row; None when one bucket holds every example."""
    counts = rows[0]["buckets"]
    if sum(1 for _, _, b in BUCKETS if counts[b][1]) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in _ordered(rows):
        ys = [r["buckets"][b][0] for _, _, b in BUCKETS]
        ax.plot(
            [b for _, _, b in BUCKETS],
            [np.nan if y is None else y for y in ys],
            marker="o",
            label=f"{r['model']} {r['setup']}",
        )
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("runs_dir", help="folder of run folders (e.g. runs/exp1)")
    p.add_argument(
        "--baseline",
        default=None,
        help="run name or setup of the rows' reference (default: each model's row with default settings)",
    )
    p.add_argument("--plot", action="store_true", help="also write test_acc.png and acc_by_length.png")
    args = p.parse_args(argv)
    try:
        rows, common = build_rows(load_runs(args.runs_dir))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    add_significance(rows, args.baseline)
    markdown, table = render(rows, common)
    paths = [os.path.join(args.runs_dir, name) for name in ("results.md", "results.csv")]
    with open(paths[0], "w") as f:
        f.write(markdown)
    with open(paths[1], "w", newline="") as f:
        fields = list(dict.fromkeys(key for row in table for key in row))  # regression rows add their own
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(table)
    print(markdown, end="")
    print(f"\nwrote {paths[0]} and {paths[1]}")
    if args.plot:
        try:
            paths = plot(rows, args.runs_dir)
        except ReportError as e:  # the table above is written; only the plots are missing
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
