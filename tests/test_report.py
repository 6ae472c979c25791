"""report.py on run folders from tiny runs: seeds merged, bold on the best, bootstrap CI,
collapsed runs flagged, length buckets."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from helpers import read_results, run_inprocess

import metrics
import report

BASE = [
    "--model",
    "tiny-bert",
    "--data",
    "synthetic",
    "--max_eval_samples",
    120,
    "--epochs",
    1,
    "--wandb",
    "disabled",
    "--max_len",
    32,
]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("grid")
    for seed in (1, 2, 3):
        for pool in ("cls", "mean"):
            assert run_inprocess(*BASE, "--pool", pool, "--seed", seed, "--out_dir", out) == 0
    # a planted collapsed run: the absurd lr of the original bs32 row's failure mode
    assert run_inprocess(*BASE, "--lr", 0.1, "--out_dir", out) == 0
    return out


@pytest.mark.slow
def test_table_merges_seeds_bolds_the_best_and_flags_collapse(runs_dir, capsys):
    assert report.main([str(runs_dir)]) == 0
    printed = capsys.readouterr().out
    assert (
        printed
        == (runs_dir / "results.md").read_text() + f"\nwrote {runs_dir / 'results.md'} and {runs_dir / 'results.csv'}\n"
    )
    main_table = printed.split("\n\n")[0]
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in main_table.splitlines()
        if line.startswith("| tiny-bert")
    }
    per_setup = {}
    for pool in ("cls", "mean"):
        per_setup[pool] = [
            read_results(runs_dir / f"tiny-bert-{pool}-L32-ep1-nev120-synthetic-s{s}") for s in (1, 2, 3)
        ]
    for pool, results in per_setup.items():
        acc = np.array([r["test_acc"] for r in results])
        cells = rows[pool]
        assert cells[3].strip("*") == f"{acc.mean():.4f} ± {acc.std(ddof=1):.4f}"
        assert cells[6] == "3"
    best = max(per_setup, key=lambda p: np.mean([r["test_acc"] for r in per_setup[p]]))
    other = "mean" if best == "cls" else "cls"
    assert rows[best][3].startswith("**") and not rows[other][3].startswith("**")
    collapsed = [k for k in rows if "COLLAPSED" in k]
    assert len(collapsed) == 1 and "**" not in "".join(rows[collapsed[0]])
    assert rows["cls"][7] == "baseline"
    csv_text = (runs_dir / "results.csv").read_text()
    assert csv_text.startswith("model,setup,n,val_acc") and csv_text.count("\n") == 4


@pytest.mark.slow
def test_ci_compares_the_rows_seed_by_seed_and_example_by_example(runs_dir):
    rows, _ = report.build_rows(report.load_runs(str(runs_dir)))
    report.add_significance(rows, None)
    mean_row, cls_row = (next(r for r in rows if r["setup"] == pool) for pool in ("mean", "cls"))

    def correct(pool):  # seeds x test examples, from the prediction files
        preds = [
            np.load(runs_dir / f"tiny-bert-{pool}-L32-ep1-nev120-synthetic-s{s}" / "test_predictions.npz")
            for s in (1, 2, 3)
        ]
        return np.array([p["probs"].argmax(1) == p["labels"] for p in preds], dtype=float)

    assert np.array_equal(mean_row["correct_runs"], correct("mean"))
    assert mean_row["delta"] == pytest.approx(metrics.seed_and_example_bootstrap(correct("mean"), correct("cls")))
    assert not mean_row["few_seeds"]
    assert math.isclose(
        mean_row["delta"][0],
        np.mean(
            [read_results(runs_dir / f"tiny-bert-mean-L32-ep1-nev120-synthetic-s{s}")["test_acc"] for s in (1, 2, 3)]
        )
        - cls_row["test_acc"],
    )


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [("-s1",), ("-s1", "-s2")])
def test_a_comparison_with_fewer_than_3_seeds_is_never_starred(runs_dir, seeds):
    runs = [r for r in report.load_runs(str(runs_dir)) if r["name"].endswith(seeds) and "lr" not in r["name"]]
    assert len(runs) == 2 * len(seeds)
    for better in (r for r in runs if "-mean-" in r["name"]):
        better["probs"] = np.eye(2)[better["labels"]]  # every test example right: far above cls's accuracy
    rows, common = report.build_rows(runs)
    report.add_significance(rows, None)
    text, table = report.render(rows, common)
    line = next(line for line in text.splitlines() if line.startswith("| tiny-bert | mean"))
    low = next(r for r in rows if r["setup"] == "mean")["delta"][1]
    assert low > 0 and line.endswith("† |") and "*" not in line.replace("**", "")
    assert next(t for t in table if t["setup"] == "mean")["ci_few_seeds"] is True


@pytest.mark.slow
def test_length_buckets_match_a_direct_computation(runs_dir):
    rows, _ = report.build_rows(report.load_runs(str(runs_dir)))
    row = next(r for r in rows if r["setup"] == "cls")
    preds = np.load(runs_dir / "tiny-bert-cls-L32-ep1-nev120-synthetic-s1" / "test_predictions.npz")
    lengths = preds["n_tokens"]
    assert (lengths > 32).any()  # texts longer than max_len: the buckets use untruncated lengths
    correct = row["correct"]
    assert row["buckets"]["≤128"] == (pytest.approx(correct[lengths <= 128].mean()), int((lengths <= 128).sum()))


@pytest.mark.slow
def test_plots_are_written(runs_dir, capsys):
    assert report.main([str(runs_dir), "--plot"]) == 0
    assert (runs_dir / "test_acc.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert f"wrote {runs_dir / 'test_acc.png'}\n" in printed
    # the synthetic texts are all under 128 tokens: one bucket, nothing to plot against length
    assert "acc_by_length.png not written" in printed and not (runs_dir / "acc_by_length.png").exists()


def one_seed_rows(runs_dir):
    runs = [r for r in report.load_runs(str(runs_dir)) if r["name"].endswith("-s1") and "lr" not in r["name"]]
    for better in (r for r in runs if "-mean-" in r["name"]):
        better["probs"] = np.eye(2)[better["labels"]]  # every test example right: the CI reaches past 1.0
        better["results"] = dict(better["results"], test_acc=1.0)
    rows, common = report.build_rows(runs)
    report.add_significance(rows, None)
    return rows, common


@pytest.mark.slow
def test_one_seed_rows_show_no_std_and_their_comparison_is_marked_in_the_plot(runs_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, common = one_seed_rows(runs_dir)
    _, table = report.render(rows, common)
    assert all(t[f"{col}_std"] == "" for t in table for col, _ in report.COLUMNS)  # blank, not 0.0
    ax = report.accuracy_figure(rows, plt).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tiny-bert\ncls", "tiny-bert\nmean †"]
    (bars,) = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    (segments,) = [lines.get_segments() for lines in bars.lines[2]]
    assert len(segments) == 1 and segments[0][0][0] == 1  # one bar, on the compared row, none on the baseline
    mean_row = next(r for r in rows if r["setup"] == "mean")
    ci_top = mean_row["test_acc"] + mean_row["delta"][2] - mean_row["delta"][0]
    assert ci_top > 1 and segments[0][1][1] == pytest.approx(ci_top) and ax.get_ylim()[1] > ci_top  # not cut at 1.0
    plt.close("all")


@pytest.mark.slow
def test_the_length_plot_says_tokens_and_is_skipped_with_one_bucket(runs_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = one_seed_rows(runs_dir)
    for row in rows:
        row["buckets"] = report.bucket_accuracy(row["correct"], np.resize([40, 200], len(row["correct"])))
    assert report.length_figure(rows, plt).axes[0].get_xlabel() == "length (tokens)"
    for row in rows:
        row["buckets"] = report.bucket_accuracy(row["correct"], np.full(len(row["correct"]), 40))
    said = []
    assert report.plot(rows, str(tmp_path), say=said.append) == [str(tmp_path / "test_acc.png")]
    assert not (tmp_path / "acc_by_length.png").exists() and "one length bucket" in said[0]
    plt.close("all")


def test_bad_runs_dir_is_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'} is not a folder"
    assert report.main([str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def copy_runs(runs_dir, to, names):
    for name in names:
        shutil.copytree(runs_dir / name, to / name)
    return [to / name for name in names]


@pytest.mark.slow
def test_unreadable_run_folders_are_named_and_skipped(runs_dir, tmp_path, capsys):
    good, *bad = copy_runs(
        runs_dir,
        tmp_path,
        [
            f"tiny-bert-{pool}-L32-ep1-nev120-synthetic-s{s}"
            for pool, s in [("cls", 1), ("cls", 2), ("cls", 3), ("mean", 1), ("mean", 2)]
        ],
    )
    results = bad[0] / "results.json"
    results.write_text(results.read_text()[:40])  # truncated
    without_key = json.loads((bad[1] / "results.json").read_text())
    del without_key["test_acc"]
    (bad[1] / "results.json").write_text(json.dumps(without_key))
    (bad[2] / "test_predictions.npz").write_bytes(b"not a zip file at all" * 10)
    (bad[3] / "config.json").write_text("{}")
    assert report.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert [line.split(":")[0] for line in warnings] == ["warning"] * 4
    for folder, why in zip(
        bad,
        [
            "results.json is unreadable",
            "results.json has no test_acc",
            "test_predictions.npz is unreadable",
            "config.json has no model, pool, seed",
        ],
        strict=True,
    ):
        assert any(f"skipped {folder}: {why}" in line for line in warnings), (folder, why)
    table = (tmp_path / "results.md").read_text()
    assert good.name.split("-")[1] in table and table.count("| tiny-bert |") == 2  # one row, both tables


@pytest.mark.slow
def test_runs_of_the_same_seed_are_counted_once_and_flagged(runs_dir, tmp_path):
    names = [f"tiny-bert-{pool}-L32-ep1-nev120-synthetic-s{s}" for pool, s in [("cls", 1), ("cls", 2), ("mean", 1)]]
    copy_runs(runs_dir, tmp_path, names)
    # the same settings and seed with 2 processes, in the same folder under another run name
    twin = tmp_path / f"{names[0]}-2proc"
    shutil.copytree(tmp_path / names[0], twin)
    for file_name, changes in (
        ("config.json", {"world_size": 2, "run_name": twin.name}),
        ("results.json", {"test_acc": 0.0}),
    ):
        content = json.loads((twin / file_name).read_text())
        (twin / file_name).write_text(json.dumps(dict(content, **changes)))
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    cls_line = next(line for line in text.splitlines() if line.startswith("| tiny-bert | cls"))
    cells = [c.strip() for c in cls_line.split("|")[1:-1]]
    acc = [read_results(tmp_path / name)["test_acc"] for name in names[:2]]
    assert cells[6] == "2 ‡" and cells[3].strip("*") == f"{np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f}"
    assert f"seed 1: counted {names[0]}, not {twin.name}" in text
    csv_row = next(line for line in (tmp_path / "results.csv").read_text().splitlines() if ",cls," in line)
    assert f",{twin.name}," in csv_row + ","


def _regression_run(folder, pool, seed, predictions, labels):
    folder.mkdir(parents=True)
    scores = {
        "val_pearson": metrics.pearson(predictions, labels) - 0.01,
        "test_pearson": metrics.pearson(predictions, labels),
        "test_spearman": metrics.spearman(predictions, labels),
        "test_mse": metrics.mean_squared_error(predictions, labels),
        "test_loss": 0.0,
    }
    (folder / "results.json").write_text(json.dumps(scores))
    (folder / "config.json").write_text(
        json.dumps(
            {"model": "tiny-bert", "pool": pool, "seed": seed, "task": "regression", "metric_for_best": "pearson"}
        )
    )
    np.savez(folder / "test_predictions.npz", predictions=predictions, labels=labels, n_tokens=np.full(len(labels), 20))


def test_regression_runs_get_their_own_table_with_pearson_and_its_ci(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.normal(size=300)
    for seed in (1, 2, 3):  # mean pooling tracks the labels far better than cls here
        _regression_run(tmp_path / f"cls-s{seed}", "cls", seed, labels + rng.normal(scale=2.0, size=300), labels)
        _regression_run(tmp_path / f"mean-s{seed}", "mean", seed, labels + rng.normal(scale=0.5, size=300), labels)
    assert report.main([str(tmp_path), "--plot"]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| model"))
    assert "test_pearson" in header and "test_spearman" in header and "test_mse" in header
    assert "ece" not in printed and "COLLAPSED" not in printed and "by review length" not in printed
    assert "no plots" in printed
    mean_row = next(line for line in printed.splitlines() if line.startswith("| tiny-bert | mean"))
    d, low, high = metrics.seed_and_example_bootstrap_of(
        metrics.pearson,
        *[
            np.array([np.load(tmp_path / f"{p}-s{s}" / "test_predictions.npz")["predictions"] for s in (1, 2, 3)])
            for p in ("mean", "cls")
        ],
        labels,
    )
    assert low > 0 and mean_row.endswith(f"{d:+.4f} [{low:+.4f}, {high:+.4f}] * |")
    assert (tmp_path / "results.csv").read_text().startswith("task,model,setup,n,val_pearson")


def test_a_regression_run_flagged_collapsed_with_a_nan_metric_is_kept_and_marked(tmp_path, capsys):
    """results.json writes a NaN figure as null (named under not_finite) and a run without a best
    epoch as collapsed: the report reads it as NaN and marks the row, instead of skipping the run."""
    rng = np.random.default_rng(0)
    labels = rng.normal(size=100)
    for seed in (1, 2):
        _regression_run(tmp_path / f"cls-s{seed}", "cls", seed, labels + rng.normal(size=100), labels)
    _regression_run(tmp_path / "mean-s1", "mean", 1, np.zeros(100), labels)
    flagged = tmp_path / "mean-s1" / "results.json"
    results = json.loads(flagged.read_text())
    results.update(val_pearson=None, test_pearson=None, not_finite={"val_pearson": "nan", "test_pearson": "nan"})
    flagged.write_text(json.dumps(dict(results, collapsed=True, collapsed_reason="constant predictions")))
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" not in printed and "not a number" not in printed, printed
    mean_row = next(line for line in printed.splitlines() if line.startswith("| tiny-bert | mean"))
    assert "COLLAPSED" in mean_row and "nan" in mean_row, mean_row


# ---- run folders written directly (no training): what the table says about them


def fake_classification_run(folder, seed, labels, right, n_tokens=None, results=None, **config):
    """A finished classification run: right[i] says whether it answered test example i correctly."""
    labels, right = np.asarray(labels), np.asarray(right, bool)
    folder.mkdir(parents=True)
    probs = np.where(right, labels, 1 - labels)[:, None] == np.arange(2)
    acc = float(right.mean())
    scores = {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "test_ece": 0.1, "test_mcc": 0.2, **(results or {})}
    (folder / "results.json").write_text(json.dumps(scores))
    (folder / "config.json").write_text(json.dumps({"model": "tiny-bert", "pool": "cls", "seed": seed, **config}))
    n_tokens = np.full(len(labels), 20) if n_tokens is None else n_tokens
    np.savez(folder / "test_predictions.npz", probs=probs.astype(float), labels=labels, n_tokens=n_tokens)


def fake_mlm_run(folder, seed, **config):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"val_loss": 3.0, "val_acc": 0.3, "val_perplexity": 20.0}))
    (folder / "config.json").write_text(
        json.dumps({"model": "tiny-bert", "pool": "cls", "seed": seed, "task": "mlm", **config})
    )


def lines_of(printed, start):
    return [line for line in printed.splitlines() if line.startswith(start)]


def test_glue_runs_scored_on_the_validation_split_say_so_and_show_the_tasks_headline_metric(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    for seed, f1 in ((1, 0.80), (2, 0.82)):
        fake_classification_run(
            tmp_path / f"mrpc-s{seed}",
            seed,
            labels,
            rng.random(200) < 0.7,
            results={"test_split": "validation", "metric_for_best": "f1_positive", "test_f1_positive": f1},
            data="glue/mrpc",
            text_col=["sentence1", "sentence2"],
            metric_for_best="f1_positive",
        )
    fake_classification_run(tmp_path / "imdb-s1", 1, labels, rng.random(200) < 0.8, results={"test_split": "test"})
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    test_header, validation_header = [line for line in lines_of(printed, "| model |") if "val_acc" in line]
    assert "| test_acc |" in test_header and "validation" not in test_header
    assert "| val_acc | validation_acc | validation_loss |" in validation_header and "test_" not in validation_header
    assert "| validation_f1_positive |" in validation_header  # MRPC's headline metric
    assert "scored on the validation split" in printed and "| – (other test set) |" in printed  # not paired
    mrpc = next(line for line in lines_of(printed, "| tiny-bert |") if "mrpc" in line)
    cells = [c.strip() for c in mrpc.split("|")[1:-1]]
    assert cells[validation_header.split("|")[1:-1].index(" validation_f1_positive ")].strip("*") == (
        f"{0.81:.4f} ± {np.std([0.80, 0.82], ddof=1):.4f}"
    )
    csv_row = next(row for row in csv.DictReader(open(tmp_path / "results.csv")) if "mrpc" in row["setup"])
    assert csv_row["test_split"] == "validation" and float(csv_row["test_f1_positive"]) == pytest.approx(0.81)


def test_a_run_that_says_nothing_of_collapse_is_judged_by_the_rule_training_uses(tmp_path, capsys):
    """A run whose results.json has no `collapsed` verdict (written before it existed) is judged on
    its test figures by metrics.is_collapsed, the rule training applies to its validation epochs:
    accuracy at the majority rate and loss at or above 0.95 ln K."""
    labels = (np.arange(100) % 4 == 0).astype(int)  # class 0 is 75% of the examples
    prior = labels == 0  # always answers class 0: right exactly on the majority
    fake_classification_run(tmp_path / "prior-s1", 1, labels, prior, results={"test_loss": 0.67}, pool="mean")
    fake_classification_run(tmp_path / "learned-s1", 1, labels, prior, results={"test_loss": 0.5})
    runs = {run["name"]: run for run in report.load_runs(str(tmp_path))}
    for name, collapsed in (("prior-s1", True), ("learned-s1", False)):
        figures = {"acc": 0.75, "loss": runs[name]["results"]["test_loss"]}
        assert metrics.is_collapsed([figures], metrics.majority_rate(labels, 2), 2) is collapsed
        assert report.run_is_collapsed(runs[name]) is collapsed
    # the run's own verdict comes first, whatever its figures
    runs["learned-s1"]["results"]["collapsed"] = True
    assert report.run_is_collapsed(runs["learned-s1"])
    assert report.main([str(tmp_path)]) == 0
    main_table = capsys.readouterr().out.split("\n\n")[0]
    assert [line.split("|")[2].strip() for line in lines_of(main_table, "| tiny-bert |")] == [
        "cls",
        "mean — COLLAPSED, not a result",
    ]


def test_a_baseline_that_names_no_run_is_one_error_line_listing_the_runs(tmp_path, capsys):
    labels = np.arange(100) % 2
    for pool in ("cls", "mean"):
        fake_classification_run(tmp_path / f"tiny-{pool}-s1", 1, labels, labels == 0, pool=pool)
    assert report.main([str(tmp_path), "--baseline", "tiny-max-s1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --baseline tiny-max-s1 names no run or setup"), err
    assert "runs: tiny-cls-s1, tiny-mean-s1" in err and "setups: cls, mean" in err
    assert not (tmp_path / "results.md").exists()
    assert report.main([str(tmp_path), "--baseline", "tiny-mean-s1"]) == 0


def test_a_missing_delta_says_why_and_the_length_table_gives_each_rows_counts(tmp_path, capsys):
    labels = np.arange(120) % 2
    lengths = np.where(np.arange(120) < 90, 100, 200)
    for seed in (1, 2, 3):
        fake_classification_run(tmp_path / f"cls-s{seed}", seed, labels, labels == 0, n_tokens=lengths)
        fake_classification_run(tmp_path / f"mean-s{seed}", seed, labels, labels == 1, n_tokens=lengths, pool="mean")
        # another test set (another subset of the data): no paired comparison with the baseline
        fake_classification_run(
            tmp_path / f"small-s{seed}", seed, labels[:60], labels[:60] == 0, max_eval_samples=60, n_tokens=lengths[:60]
        )
        # a model with no run of the default settings: nothing to compare with
        fake_classification_run(
            tmp_path / f"mb-s{seed}", seed, labels, labels == 0, model="tiny-modernbert", pool="mean"
        )
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    main_table = printed.split("\n\n")[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines_of(main_table, "| tiny-")}
    assert rows["tiny-bert", "cls, nev60"].endswith("| – (other test set) |")
    assert rows["tiny-modernbert", "mean"].endswith("| 3 | – (no baseline row) |")
    assert rows["tiny-bert", "mean"].endswith("] |")  # the same test set as its baseline: a Δ
    assert "– (other test set): " in printed and "– (no baseline row): " in printed
    length_table = printed.split("by review length")[1].split("\n\n")[1]
    cls_row = next(line for line in lines_of(length_table, "| tiny-bert | cls |"))
    small_row = next(line for line in lines_of(length_table, "| tiny-bert | cls, nev60 |"))
    assert "(n=90)" in cls_row and "(n=30)" in cls_row and "(n=60)" in small_row and "(n=30)" not in small_row


def test_a_folder_of_pretraining_runs_only_has_no_fine_tuning_or_ci_legend(tmp_path, capsys):
    for seed in (1, 2):
        fake_mlm_run(tmp_path / f"pre-s{seed}", seed)
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Masked-LM pretraining runs" in printed and "Shared by every row:" in printed
    assert "fine-tuning" not in printed and "CI" not in printed and "†" not in printed and "seeds (n)" in printed


def test_rows_from_other_code_are_flagged_with_the_commit_and_uncommitted_changes(tmp_path, capsys):
    labels = np.arange(100) % 2
    clean = {"sources_sha256": "a" * 16, "git_commit": "c" * 40, "git_dirty": False, "git_diff_sha256": None}
    edited = dict(clean, sources_sha256="b" * 16, git_dirty=True, git_diff_sha256="d" * 16)
    for pool, code in (("cls", clean), ("mean", clean), ("mean", edited)):
        seed = 2 if code is edited else 1
        fake_classification_run(tmp_path / f"{pool}-s{seed}", seed, labels, labels == 0, pool=pool, code_version=code)
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[2].strip(): line for line in lines_of(printed.split("\n\n")[0], "| tiny-bert |")}
    assert "§" in rows["mean §"] and "cls" in rows
    assert "§ = rows with runs from other code than the rest:" in printed
    assert f"run mean-s2 ran commit {'c' * 12} with uncommitted changes (diff {'d' * 16})" in printed
    assert f"the other 2 runs ran commit {'c' * 12}" in printed
