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
- test accuracy by review length in tokens, so the effect of max_len / truncation is visible;
- runs scored on a validation split (GLUE: the test labels are hidden) in a table of their own
  whose columns name that split, with the task's headline metric (MRPC F1, CoLA MCC) and the one
  that picked the best epoch;
- rows whose runs ran other code than the rest (config.json code_version) marked §, and runs
  trained from an earlier model of the pretraining run they start from shown apart.
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
import glue
import metrics

BUCKETS = [(0, 128, "≤128"), (129, 256, "129–256"), (257, 512, "257–512"), (513, math.inf, ">512")]
COLUMNS = [("val_acc", max), ("test_acc", max), ("test_loss", min), ("test_ece", min)]
REGRESSION_COLUMNS = [("val_pearson", max), ("test_pearson", max), ("test_spearman", max), ("test_mse", min)]
MLM_COLUMNS = [("val_loss", min), ("val_acc", max), ("val_perplexity", min)]
COLUMNS_OF = {"classification": COLUMNS, "regression": REGRESSION_COLUMNS, "mlm": MLM_COLUMNS}
COMPARED = {"classification": "test_acc", "regression": "test_pearson"}  # the Δ column's metric; mlm has none
TITLES = {
    "classification": "Classification runs",
    "regression": "Regression runs",
    "mlm": "Masked-LM pretraining runs (validation, masked tokens)",
}
NO_DELTA = {  # why a row has no Δ, as its cell says
    "other test set": "scored on other test examples than its model's baseline (another --data, split or "
    "subset), so there is no paired difference",
    "no baseline row": "its model has no row with the default settings (or the one --baseline names)",
}
MIN_SEEDS_FOR_STAR = 3  # per side; see metrics.seed_and_example_bootstrap


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
            run = read_run(name, *paths)
        except ReportError as e:
            print(f"warning: skipped {folder}: {e}", file=sys.stderr)
            continue
        run["start_changed"] = settings.start_model_changed(folder, run["config"])  # config.finished's rule
        runs.append(run)
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
    for col in results.get("not_finite") or {}:  # JSON has no NaN: results.json writes null and names it
        if col in results and results[col] is None:
            results[col] = math.nan
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


def run_is_collapsed(run: dict) -> bool:
    """The run's own verdict (any task: a regression run whose metric was NaN at every epoch says
    so), or for classification training's collapse rule (metrics.is_collapsed) on its test figures."""
    if run["results"].get("collapsed"):
        return True
    if run["task"] != "classification":
        return False
    k = run["probs"].shape[1]
    test = {"acc": run["results"]["test_acc"], "loss": run["results"]["test_loss"]}
    return metrics.is_collapsed([test], metrics.majority_rate(run["labels"], k), k)


def shown_settings(run: dict) -> dict:
    """settings_of, where a run trained from an earlier model of its pretraining run says so: it
    is then a row of its own, never merged with the runs from that run's current model."""
    shown = settings_of(run["config"])
    if run.get("start_changed"):
        shown["start"] += " (earlier model)"
    return shown


def scored_split(run: dict) -> str:
    """The split a run's test columns score: test, or validation where the test labels are hidden."""
    return run["results"].get("test_split") or run["config"].get("test_split") or "test"


def headline_columns(run: dict) -> list[str]:
    """The test columns a run is judged by: a GLUE task's leaderboard metric (MRPC F1, CoLA MCC)
    and the metric that picked its best epoch."""
    if run["task"] not in COMPARED:
        return []
    glue_task = glue.GLUE_TASKS.get(glue.task_of(str(run["config"].get("data", ""))))
    picked = run["results"].get("metric_for_best", run["config"].get("metric_for_best"))
    names = [glue_task.metric if glue_task else None, picked]
    return [
        f"test_{name}" for name in dict.fromkeys(names) if name in metrics.TASK_METRICS[run["task"]].higher_is_better
    ]


def value_columns(task: str) -> list[str]:
    """The columns a row averages: its table's, and every test metric its task reports."""
    extra = [f"test_{name}" for name in metrics.TASK_METRICS[task].higher_is_better] if task in COMPARED else []
    return list(dict.fromkeys([col for col, _ in COLUMNS_OF[task]] + extra))


def build_rows(runs: list[dict]) -> tuple[list[dict], str]:
    """Rows of runs that differ only in seed, and the settings every row shares."""
    shown = [shown_settings(run) for run in runs]
    # what the compared runs share; a pretraining stage's runs (mlm) do not narrow it
    compared = [s for run, s in zip(runs, shown, strict=True) if run["task"] != "mlm"] or shown
    common = {k: v for k, v in compared[0].items() if k != "pool" and all(s.get(k) == v for s in compared)}
    configs = {run["name"]: run["config"] for run in runs}
    groups = {}
    for run, run_settings in zip(runs, shown, strict=True):
        # a pretraining run shows all its settings: `common` is what the compared runs share
        setup = ", ".join(v for k, v in run_settings.items() if k not in common or run["task"] == "mlm")
        key = (run["task"], scored_split(run), model_of(run["config"], configs), setup)
        groups.setdefault(key, []).append(run)
    rows = []
    for (task, split, model_name, setup), group in sorted(groups.items()):
        # runs of one seed (e.g. with 1 and 2 processes) are not independent samples: the first
        # (by name) counts, the others are listed
        by_seed = {}
        for run in group:
            by_seed.setdefault(run["config"]["seed"], []).append(run)
        members = [same_seed[0] for same_seed in by_seed.values()]
        row = {
            "task": task,
            "test_split": split,
            "model": model_name,
            "setup": setup,
            "headlines": headline_columns(members[0]),
            "start_changed": sorted({r["start_changed"] for r in group if r.get("start_changed")}),
            "codes": {r["name"]: r["config"].get("code_version") for r in group},
            "n": len(members),
            "runs": members,
            "collapsed": any(run_is_collapsed(r) for r in members),
            "names": [r["name"] for r in group],
            "duplicate_seeds": [
                (seed, [r["name"] for r in same_seed]) for seed, same_seed in by_seed.items() if len(same_seed) > 1
            ],
        }
        for col in value_columns(task):
            values = [r["results"].get(col) for r in members]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                row[col] = row[col + "_std"] = None  # a headline metric some run has not (read_run checks the rest)
                continue
            row[col] = np.mean(values)
            row[col + "_std"] = np.std(values, ddof=1) if len(values) > 1 else None  # no spread from one seed
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


def add_significance(rows: list[dict], baseline: str | None) -> None:
    """Each compared row's Δ against its model's baseline row, or why it has none (no_delta)."""
    compared = [r for r in rows if r["task"] in COMPARED]
    if baseline and not any(baseline in r["names"] or r["setup"] == baseline for r in compared):
        raise ReportError(
            f"--baseline {baseline} names no run or setup of the fine-tuning runs here; runs: "
            f"{', '.join(sorted(name for r in compared for name in r['names']))}; setups: "
            f"{', '.join(sorted({r['setup'] for r in compared}))}"
        )
    for row in rows:
        row["is_baseline"], row["delta"], row["no_delta"] = False, None, None
    for task, model_name in {(r["task"], r["model"]) for r in compared}:
        group = [r for r in compared if r["task"] == task and r["model"] == model_name]
        if baseline:
            base = next((r for r in group if baseline in r["names"] or r["setup"] == baseline), None)
        else:
            # default settings: the setup shows the pool alone (settings_of always shows it)
            base = next((r for r in group if r["setup"] == settings.DEFAULTS["pool"]), None)
        for row in group:
            row["is_baseline"] = row is base
            if row is base:
                continue
            if base is None:
                row["no_delta"] = "no baseline row"
            elif not same_test_set(row, base):
                row["no_delta"] = "other test set"  # no paired comparison
            elif task == "regression":
                row["delta"] = metrics.seed_and_example_bootstrap_of(
                    metrics.pearson, row["prediction_runs"], base["prediction_runs"], base["runs"][0]["labels"]
                )
            else:
                row["delta"] = metrics.seed_and_example_bootstrap(row["correct_runs"], base["correct_runs"])
            if row["delta"]:
                row["few_seeds"] = min(row["n"], base["n"]) < MIN_SEEDS_FOR_STAR


def same_test_set(row: dict, base: dict) -> bool:
    """Whether two rows scored the same examples: the same split, the same labels, and the same
    test file where train.py recorded its hash (config.json test_data_sha256)."""
    a, b = row["runs"][0], base["runs"][0]
    hashes = [run["config"].get("test_data_sha256") for run in (a, b)]
    return (
        row["test_split"] == base["test_split"]
        and (None in hashes or hashes[0] == hashes[1])
        and len(a["labels"]) == len(b["labels"])
        and np.array_equal(a["labels"], b["labels"])
    )


def render(rows: list[dict], common: str) -> tuple[str, list[dict]]:
    """The markdown (one table per task and scored split, the length buckets of the
    classification rows, the notes) and the CSV rows."""
    lines, table = [], []
    code_lines = mark_other_code(rows)
    for task in COLUMNS_OF:
        for split in sorted({r["test_split"] for r in rows if r["task"] == task}, key=lambda s: (s != "test", s)):
            untitled = task == "classification" and split == "test"  # the main table: no title
            if lines or not untitled:
                lines += ([""] if lines else []) + [table_title(task, split), ""]
            task_rows = [r for r in rows if r["task"] == task and r["test_split"] == split]
            lines += task_table(task_rows, task, split, table)
    lines += notes(rows) + length_table([r for r in rows if r["task"] == "classification"])
    lines += ["", legend(rows, common), *code_lines]
    return "\n".join(lines) + "\n", table


def table_title(task: str, split: str) -> str:
    if split == "test" or task not in COMPARED:
        return TITLES[task] + ":"
    return (
        f"{TITLES[task]} scored on the {split} split (the data's test labels are hidden), so their "
        f"columns say {split}_; val_ is the part of train held out to pick the best epoch:"
    )


def notes(rows: list[dict]) -> list[str]:
    """The lines under the tables: runs of one seed counted once (‡), rows without a Δ, runs
    trained from an earlier model of their pretraining run."""
    lines = []
    duplicates = [(row, seed, names) for row in rows for seed, names in row["duplicate_seeds"]]
    if duplicates:
        lines.append(
            "‡ = runs with the same settings and seed (e.g. with 1 and 2 processes) are not independent: "
            "each seed counts once, the first run by name. "
            + "; ".join(
                f"{row['model']} {row['setup']}, seed {seed}: counted {names[0]}, not {', '.join(names[1:])}"
                for row, seed, names in duplicates
            )
            + "."
        )
    for reason in sorted({r["no_delta"] for r in rows if r.get("no_delta")}):
        lines.append(f"– ({reason}): {NO_DELTA[reason]}.")
    changed = sorted({why for r in rows for why in r["start_changed"]})
    if changed:
        lines.append(
            f"(earlier model) = trained from a model its pretraining run no longer holds ({'; '.join(changed)}): "
            "not a result of that run's current model. Move those run folders away and rerun the grid to redo them."
        )
    if any(set(r["headlines"]) - {col for col, _ in COLUMNS_OF[r["task"]]} for r in rows):
        lines.append(
            "The columns after the table's own are the runs' headline metrics: a GLUE task's (MRPC, QQP: "
            "f1_positive, the F1 of label 1; CoLA: mcc, Matthews correlation) and the one that picked the best "
            "epoch (--metric_for_best)."
        )
    return [""] + lines if lines else []


def length_table(classified: list[dict]) -> list[str]:
    """Accuracy per length bucket, each cell with its row's examples in that bucket (rows scored
    on other test sets have other counts)."""
    if not classified:
        return []
    scored = "Test" if {r["test_split"] for r in classified} == {"test"} else "Scored-split"
    lines = [
        "",
        f"{scored} accuracy by review length in tokens (n = the row's examples in the bucket):",
        "",
        "| model | setup | " + " | ".join(label for _, _, label in BUCKETS) + " |",
        "|---|---|" + "---:|" * len(BUCKETS),
    ]
    for row in _ordered(classified):
        cells = []
        for _, _, label in BUCKETS:
            accuracy, count = row["buckets"][label]
            cells.append("–" if accuracy is None else f"{accuracy:.4f} (n={count})")
        lines.append(f"| {row['model']} | {row['setup']} | " + " | ".join(cells) + " |")
    return lines


def legend(rows: list[dict], common: str) -> str:
    compared = any(r["task"] in COMPARED for r in rows)
    rows_sharing = "fine-tuning row" if compared and any(r["task"] == "mlm" for r in rows) else "row"
    text = f"Shared by every {rows_sharing}: {common or 'nothing beyond the defaults'}. ± is the std over seeds (n)."
    if compared:
        text += (
            " The 95% CI resamples seeds and test examples; * = it excludes 0. † = fewer than "
            f"{MIN_SEEDS_FOR_STAR} seeds on a side: the CI sees training randomness poorly (2) or not at all "
            "(1), so it cannot support a conclusion (no *)."
        )
    collapsed = ", collapsed rows excluded" if any(r["task"] == "classification" for r in rows) else ""
    return text + f" Bold = best of its model{collapsed}."


def mark_other_code(rows: list[dict]) -> list[str]:
    """Sets row["other_code"] on rows with a run whose Python sources differ from most runs'
    (config.json code_version); returns the lines that say which code each run ran."""
    by_sources = {}
    for row in rows:
        for name, version in row["codes"].items():
            if settings.code_sources(version) is not None:
                by_sources.setdefault(settings.code_sources(version), []).append((name, version))
    for row in rows:
        row["other_code"] = False
    if not by_sources:
        return []
    groups = sorted(by_sources.values(), key=lambda runs: (-len(runs), runs[0][0]))
    if len(groups) == 1:
        return ["", f"Code: every run ran {describe_code(groups[0])}."]
    others = {name for runs in groups[1:] for name, _ in runs}
    for row in rows:
        row["other_code"] = bool(others & set(row["codes"]))
    said = "; ".join(
        f"run{'s' if len(runs) > 1 else ''} {', '.join(sorted(name for name, _ in runs))} ran {describe_code(runs)}"
        for runs in groups[1:]
    )
    return [
        "",
        f"§ = rows with runs from other code than the rest: {said}; the other {len(groups[0])} "
        f"run{'s' if len(groups[0]) > 1 else ''} ran {describe_code(groups[0])}.",
    ]


def describe_code(runs: list[tuple]) -> str:
    """Runs of the same sources, as the checkouts they ran from (one, or several commits)."""
    described = []
    for _, version in runs:
        version = version if isinstance(version, dict) else {"sources_sha256": version}
        if not version.get("git_commit"):
            text = f"sources {version['sources_sha256']} (no git commit recorded)"
        else:
            text = f"commit {version['git_commit'][:12]}"
            if version.get("git_dirty"):
                text += f" with uncommitted changes (diff {version.get('git_diff_sha256')})"
        described.append(text)
    return " or ".join(dict.fromkeys(described))


def task_table(rows: list[dict], task: str, split: str, table: list[dict]) -> list[str]:
    """The markdown lines of one task's table for one scored split; its CSV rows are appended to
    `table`. Columns scoring that split say its name (validation_acc, not test_acc)."""
    own = {col for col, _ in COLUMNS_OF[task]}
    headlines = [col for col in dict.fromkeys(h for r in rows for h in r["headlines"]) if col not in own]
    columns = COLUMNS_OF[task] + [
        (col, max if metrics.HIGHER_IS_BETTER[col.removeprefix("test_")] else min) for col in headlines
    ]
    compared = COMPARED.get(task)

    def label(col: str) -> str:
        return f"{split}_{col.removeprefix('test_')}" if split != "test" and col.startswith("test_") else col

    best = {}
    for model_name in {r["model"] for r in rows}:
        ranked = [r for r in rows if r["model"] == model_name and not r["collapsed"]]
        for col, pick in columns:
            values = [r[col] for r in ranked if r[col] is not None]
            if values:
                best[(model_name, col)] = pick(values)
    delta_header = f" Δ {label(compared)} vs baseline [95% CI] |" if compared else ""
    lines = [
        "| model | setup | " + " | ".join(label(col) for col, _ in columns) + f" | n |{delta_header}",
        "|---|---|" + "---:|" * len(columns) + "---:|" + ("---|" if compared else ""),
    ]
    for row in _ordered(rows):
        cells = []
        for col, _ in columns:
            if row[col] is None:
                cells.append("–")
                continue
            text = f"{row[col]:.4f}" + (f" ± {row[col + '_std']:.4f}" if row["n"] > 1 else "")
            if not row["collapsed"] and math.isclose(row[col], best.get((row["model"], col), math.nan)):
                text = f"**{text}**"
            cells.append(text)
        if row.get("is_baseline"):
            delta = "baseline"
        elif row["delta"] is None:
            delta = f"– ({row['no_delta']})" if row.get("no_delta") else "–"
        else:
            d, low, high = row["delta"]
            delta = f"{d:+.4f} [{low:+.4f}, {high:+.4f}]"
            delta += " †" if row["few_seeds"] else (" *" if low > 0 or high < 0 else "")
        setup = (
            row["setup"]
            + (" §" if row.get("other_code") else "")
            + (" — COLLAPSED, not a result" if row["collapsed"] else "")
        )
        n = f"{row['n']} ‡" if row["duplicate_seeds"] else str(row["n"])
        lines.append(
            f"| {row['model']} | {setup} | " + " | ".join(cells) + f" | {n} |" + (f" {delta} |" if compared else "")
        )
        table.append(csv_row(row, task, columns, setup))
    return lines


def csv_row(row: dict, task: str, columns: list[tuple], setup: str) -> dict:
    """One row of results.csv: the keys of results.json (test_acc even for a validation split, which
    test_split names), so the file's columns mean the same in every row."""
    compared = COMPARED.get(task)
    out = {
        "model": row["model"],
        "setup": setup,
        "n": row["n"],
        **{c: "" if row[c] is None else row[c] for c, _ in columns},
        **{c + "_std": "" if row[c + "_std"] is None else row[c + "_std"] for c, _ in columns},
        **(
            {
                f"delta_{compared}": row["delta"][0] if row["delta"] else "",
                "ci_low": row["delta"][1] if row["delta"] else "",
                "ci_high": row["delta"][2] if row["delta"] else "",
                "ci_few_seeds": row["few_seeds"] if row["delta"] else "",
                "no_delta": row.get("no_delta") or "",
            }
            if compared
            else {}
        ),
        "collapsed": row["collapsed"],
        "runs": " ".join(row["names"]),
        "duplicate_seed_runs": " ".join(name for _, names in row["duplicate_seeds"] for name in names[1:]),
        **({"test_split": row["test_split"]} if compared else {}),
    }
    if row["buckets"] is not None:
        out.update({f"acc_len_{label}": row["buckets"][label][0] for _, _, label in BUCKETS})
    return out if task == "classification" else {"task": task, **out}


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
        add_significance(rows, args.baseline)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
