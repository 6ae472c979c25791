"""Chained grids: a --task mlm stage, then runs that start from its model (--model run:NAME)."""

import json
import os
import shutil
import subprocess

import pytest
from helpers import ROOT, run_grid, write_grid

import config
import grid
import report

PRETRAIN = (
    "--task mlm --model tiny-bert --data synthetic --run_name pre --max_train_samples 96 --max_eval_samples 32 "
    "--epochs 1 --wandb disabled"
)
FINE_TUNE = "--model run:pre --data synthetic --max_train_samples 96 --max_eval_samples 32 --epochs 1 --wandb disabled"


# ---- the grid, the names and the paths (no torch)


def test_a_run_starts_from_an_mlm_run_on_an_earlier_line_only(tmp_path):
    good = grid.resolve(write_grid(tmp_path / "good.grid", PRETRAIN, FINE_TUNE + " --seed {1,2}"))
    assert [name for _, name, _ in good] == [
        "pre",
        "pre-cls-ep1-ntr96-nev32-synthetic-s1",
        "pre-cls-ep1-ntr96-nev32-synthetic-s2",
    ]
    assert grid.stages(good) == {
        "pre": 1,
        "pre-cls-ep1-ntr96-nev32-synthetic-s1": 2,
        "pre-cls-ep1-ntr96-nev32-synthetic-s2": 2,
    }
    expanded = subprocess.run(
        ["python", "grid.py", "expand", tmp_path / "good.grid"], capture_output=True, text=True, cwd=ROOT
    ).stdout.splitlines()
    assert [line.split(grid.SEP)[1:3] for line in expanded] == [["pre", ""], [good[1][1], "pre"], [good[2][1], "pre"]]

    with pytest.raises(grid.GridError, match=r"later\.grid:2: --model run:pre names no --task mlm run on an earlier"):
        grid.resolve(write_grid(tmp_path / "later.grid", FINE_TUNE, PRETRAIN))
    not_mlm = PRETRAIN.replace("--task mlm ", "")
    with pytest.raises(grid.GridError, match=r"no --task mlm run .*\(run pre is not --task mlm\)"):
        grid.resolve(write_grid(tmp_path / "cls.grid", not_mlm, FINE_TUNE))


def test_run_model_names_its_run_and_finds_it_in_out_dir_or_its_smoke_run(tmp_path):
    args = config.parse_args(["--model", "run:pre", "--out_dir", str(tmp_path)])
    assert args.run_name == "pre-cls-s42" and config.model_run(args.model) == "pre"
    assert config.model_source(args) == os.path.join(str(tmp_path), "pre", "model")
    smoke = config.parse_args(["--model", "run:pre", "--out_dir", str(tmp_path / "smoke"), "--smoke"])
    assert config.model_source(smoke) == os.path.join(str(tmp_path), "smoke", "pre-smoke", "model")
    # an explicit name gets the suffix too, so run:NAME finds NAME's smoke run by it
    assert config.parse_args(["--task", "mlm", "--run_name", "pre", "--smoke"]).run_name == "pre-smoke"
    with pytest.raises(config.UserError, match="run:NAME takes one run name"):
        config.parse_args(["--model", "run:a/b"])


def test_a_run_model_that_has_not_finished_or_wrote_no_model_is_named(tmp_path):
    args = config.parse_args(["--model", "run:pre", "--out_dir", str(tmp_path)])
    assert "run pre has not finished (no results.json" in config.model_run_unfinished(args)
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "results.json").write_text("{}")
    assert "run pre is a classification run, which writes no model folder" in config.model_run_unfinished(args)
    (tmp_path / "pre" / "model").mkdir()
    (tmp_path / "pre" / "model" / "config.json").write_text("{}")
    assert config.model_run_unfinished(args) is None
    assert config.model_run_unfinished(config.parse_args(["--model", "tiny-bert"])) is None


def test_the_report_compares_runs_from_a_pretraining_run_with_runs_from_its_model():
    configs = {"pre": {"model": "tiny-bert", "task": "mlm", "pool": "cls"}}
    start = dict(config.DEFAULTS, model="run:pre", model_default_lr=1e-3, lr=1e-3)
    assert report.model_of(start, configs) == "tiny-bert"
    assert report.settings_of(start) == {"pool": "cls", "start": "from pre"}
    assert report.model_of(dict(start, model="run:elsewhere"), configs) == "run:elsewhere"  # not in this folder
    assert "pool" not in report.settings_of(dict(config.DEFAULTS, task="mlm"))


def fake_finished_run(folder, args, **recorded):
    """The config.json and results.json train.py leaves in a finished run of these args."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(vars(config.parse_args(args)), **recorded)))
    (folder / "results.json").write_text("{}")


def fake_pretraining_run(folder, weights: bytes):
    fake_finished_run(folder, PRETRAIN.split())
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    (folder / "model" / "model.safetensors").write_bytes(weights)


def test_runs_trained_from_an_earlier_model_of_their_stage_are_refused_all_named(tmp_path):
    path = write_grid(tmp_path / "chain.grid", PRETRAIN, FINE_TUNE + " --seed {1,2}")
    runs, out = grid.resolve(path), tmp_path / "runs" / "chain"
    fake_pretraining_run(out / "pre", b"weights of the first pre")
    start = config.model_folder_hash(str(out / "pre" / "model"))
    for _, name, args in runs[1:]:
        fake_finished_run(out / name, args, start_model_sha256=start)
    assert grid.finished_runs(path, str(out), runs) == [name for _, name, _ in runs]

    shutil.rmtree(out / "pre")  # moved away to redo it with other settings: its runs must not count
    with pytest.raises(grid.GridError) as refused:
        grid.finished_runs(path, str(out), runs)
    message = str(refused.value)
    assert message.startswith(f"{path}: 2 run(s) in {out} were trained from an earlier model") and "\n" not in message
    assert f"{runs[1][1]} (line 3: run pre has no model now)" in message and runs[2][1] in message
    assert "move their folders away to rerun them" in message

    fake_pretraining_run(out / "pre", b"weights of the redone pre")  # redone
    with pytest.raises(grid.GridError, match=r"run pre's model has changed since \(it was redone\)"):
        grid.finished_runs(path, str(out), runs)
    # train.py asks the same question (checkpoint.prepare_run_dir), for a finished or an interrupted run
    own = vars(config.parse_args([*runs[1][2], "--out_dir", str(out)]))
    with pytest.raises(config.StartModelChanged, match="or --fresh to discard it"):
        config.finished(str(out / runs[1][1]), own)


def test_the_report_shows_runs_trained_from_an_earlier_model_of_their_stage_apart(tmp_path, capsys):
    from test_report import fake_classification_run, fake_mlm_run

    fake_mlm_run(tmp_path / "pre", 1)
    (tmp_path / "pre" / "model").mkdir()
    (tmp_path / "pre" / "model" / "model.safetensors").write_bytes(b"weights of the first pre")
    first = config.model_folder_hash(str(tmp_path / "pre" / "model"))
    labels = [0, 1] * 50
    for seed in (1, 2):
        fake_classification_run(
            tmp_path / f"from-pre-s{seed}", seed, labels, [True] * 100, model="run:pre", start_model_sha256=first
        )
    (tmp_path / "pre" / "model" / "model.safetensors").write_bytes(b"weights of the redone pre")  # redone
    fake_classification_run(
        tmp_path / "from-pre-s3",
        3,
        labels,
        [True] * 100,
        model="run:pre",
        start_model_sha256=config.model_folder_hash(str(tmp_path / "pre" / "model")),
    )
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.split("\n\n")[0].splitlines() if line.startswith("| tiny-bert |")]
    assert [row.split("|")[2].strip() for row in rows] == ["cls, from pre", "cls, from pre (earlier model)"]
    assert "| 1 |" in rows[0] and "| 2 |" in rows[1]  # never merged into one row
    assert "(earlier model) = trained from a model its pretraining run no longer holds (run pre's model has " in printed


# ---- train.py and run_grid.sh (they train)


@pytest.mark.slow
def test_train_refuses_a_run_model_whose_run_has_not_finished(tmp_path):
    (tmp_path / "pre" / "ckpt").mkdir(parents=True)  # started, not finished
    out = subprocess.run(
        ["python", "train.py", *FINE_TUNE.split(), "--out_dir", tmp_path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: --model run:pre: run pre has not finished"), out.stderr
    assert not (tmp_path / "pre-cls-ep1-ntr96-nev32-synthetic-s42").exists()


@pytest.mark.slow
def test_grid_runs_the_pretraining_stage_then_the_runs_that_start_from_it(tmp_path):
    g = write_grid(
        tmp_path / "chain.grid", PRETRAIN, FINE_TUNE + " --seed {1,2}", FINE_TUNE.replace("run:pre", "tiny-bert")
    )
    out = run_grid(g, "--out_dir", tmp_path / "runs")
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "runs" / "chain"
    # the smoke phase chains too: the fine-tuning smoke runs start from the pretraining smoke run
    assert out.stdout.count("smoke ok:") == 4
    smoke = json.loads((folder / "smoke" / "pre-cls-synthetic-s1-smoke" / "config.json").read_text())
    assert smoke["model_folder"] == str(folder / "smoke" / "pre-smoke" / "model")
    assert out.stdout.index("[done] pre\n") < out.stdout.index("[start] pre-cls")
    tuned = json.loads((folder / "pre-cls-ep1-ntr96-nev32-synthetic-s1" / "config.json").read_text())
    assert tuned["model_folder"] == str(folder / "pre" / "model") and tuned["lr"] == 1e-3  # tiny-bert's default lr
    table = (folder / "results.md").read_text()
    assert "| tiny-bert | cls, from pre |" in table and "| tiny-bert | cls |" in table

    again = run_grid(g, "--out_dir", tmp_path / "runs")
    assert again.returncode == 0 and again.stdout.count("[skip]") == 4 and "smoke ok" not in again.stdout


@pytest.mark.slow
def test_a_failed_pretraining_run_stops_the_runs_that_start_from_it(tmp_path):
    broken = PRETRAIN.replace("--data synthetic", f"--data {tmp_path / 'missing'}")
    g = write_grid(
        tmp_path / "chain.grid",
        broken,
        FINE_TUNE.replace("synthetic", str(tmp_path / "missing")),
        FINE_TUNE.replace("run:pre", "tiny-bert"),
    )
    out = run_grid(g, "--no-smoke", "--out_dir", tmp_path / "runs")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "[failed] pre exit 2" in out.stdout
    assert (
        "[failed] pre-cls-ep1-ntr96-nev32-missing-s42 not started: pre, the run it starts from, did not finish"
        in out.stdout
    )
    assert "[done] tiny-bert-cls-ep1-ntr96-nev32-synthetic-s42" in out.stdout  # the others still run
    assert not (tmp_path / "runs" / "chain" / "pre-cls-ep1-ntr96-nev32-missing-s42").exists()


def test_the_shipped_pretraining_demo_is_a_pretraining_stage_then_the_runs_from_it():
    runs = grid.resolve(os.path.join(ROOT, "grids", "pretrain_demo.grid"))
    stages = grid.stages(runs)
    fine_tuned = {
        start: [f"{start}-cls-ep5-ntr200-synthetic-s{seed}" for seed in range(3)] for start in ("pretrain", "tiny-bert")
    }  # tiny-bert: random init, it waits for nothing
    assert sorted(name for name, stage in stages.items() if stage == 1) == ["pretrain", *fine_tuned["tiny-bert"]]
    assert sorted(name for name, stage in stages.items() if stage == 2) == fine_tuned["pretrain"]


@pytest.mark.slow
def test_a_redone_pretraining_run_refuses_the_runs_from_its_earlier_model_until_they_are_moved_away(tmp_path):
    g = write_grid(tmp_path / "chain.grid", PRETRAIN, FINE_TUNE)
    out, runs = tmp_path / "runs" / "chain", tmp_path / "runs"
    assert (first := run_grid(g, "--out_dir", runs)).returncode == 0, first.stdout + first.stderr
    tuned = out / "pre-cls-ep1-ntr96-nev32-synthetic-s42"
    recorded = json.loads((tuned / "config.json").read_text())
    assert recorded["start_model_sha256"] == config.model_folder_hash(str(out / "pre" / "model"))
    assert recorded["code_version"]["sources_sha256"] == config.code_version()["sources_sha256"]
    assert isinstance(recorded["code_version"]["git_dirty"], bool)  # this checkout is a git one

    # pre redone with other settings: its folder moved away, its line changed (the same run name)
    shutil.move(out / "pre", tmp_path / "first-pre")
    g = write_grid(tmp_path / "chain.grid", PRETRAIN + " --mlm_prob 0.2", FINE_TUNE)
    refused = run_grid(g, "--out_dir", runs)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stdout + refused.stderr
    assert f"{tuned.name} (line 3: run pre has no model now)" in refused.stderr and "[skip]" not in refused.stdout

    shutil.move(tuned, tmp_path / "first-tuned")
    redone = run_grid(g, "--out_dir", runs)
    assert redone.returncode == 0, redone.stdout + redone.stderr
    # the smoke runs start over: pre's with its new settings, then the run from it (not "passed before")
    assert "smoke ok: pre\n" in redone.stdout and f"smoke ok: {tuned.name}\n" in redone.stdout
    assert "[done] pre\n" in redone.stdout and f"[done] {tuned.name}\n" in redone.stdout
    now = json.loads((tuned / "config.json").read_text())["start_model_sha256"]
    assert now == config.model_folder_hash(str(out / "pre" / "model")) != recorded["start_model_sha256"]
