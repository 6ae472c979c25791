"""Every mistake a user can make ends in one clear line on stderr and a non-zero exit."""
import pandas as pd
import pytest

from conftest import run_cli, run_inprocess


def folder(tmp_path, train, test=None):
    pd.DataFrame(train).to_csv(tmp_path / "train.csv", index=False)
    if test is not None:
        pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    return str(tmp_path)


GOOD = {"text": ["good", "bad"] * 20, "label": [1, 0] * 20}

CASES = {
    "unknown model": (lambda p: ["--model", "nosuchmodel"], "unknown --model 'nosuchmodel'"),
    "unknown pool": (lambda p: ["--pool", "max"], "invalid choice: 'max'"),
    "missing data": (lambda p: ["--data", str(p / "nope")], "no such file or folder"),
    "text column": (lambda p: ["--data", folder(p, {"review": ["a", "b"] * 5, "label": [0, 1] * 5})],
                    "column(s) text not found in the data; columns are: review, label"),
    "label column": (lambda p: ["--data", folder(p, GOOD), "--label_col", "sentiment"],
                     "column(s) sentiment not found in the data; columns are: text, label"),
    "max_len": (lambda p: ["--data", folder(p, GOOD), "--max_len", "1024"],
                "--max_len 1024 exceeds the model's limit of 512"),
    "batch": (lambda p: ["--data", folder(p, GOOD), "--grad_accum", "3"],
              "--batch_size 16 is not divisible by world size 1 x grad_accum 3"),
    "empty split": (lambda p: ["--data", folder(p, GOOD, {"text": [], "label": []})], "split of"),
    "single class": (lambda p: ["--data", folder(p, {"text": ["a"] * 10, "label": [1] * 10})], "single class"),
    "float labels": (lambda p: ["--data", folder(p, {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})],
                     "labels must be integers or strings"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line(case, tmp_path, capsys, cache_dir):
    make_args, message = CASES[case]
    code = run_inprocess("--model", "tiny-bert", "--wandb", "disabled", "--out_dir", tmp_path / "runs",
                         *make_args(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error:")


def test_cli_error_has_no_traceback_and_keeps_written_runs(tmp_path):
    out = run_cli("--model", "tiny-bert", "--data", tmp_path / "missing", "--wandb", "disabled",
                  "--out_dir", tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'missing'}: no such file or folder"]
