"""What code a run ran: the sources' hash and the checkout's git state (config.code_version)."""

import subprocess

import config

NOT_A_CHECKOUT = {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}


def git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True
    )


def test_the_git_state_says_whether_tracked_files_were_edited_and_hashes_the_edit(tmp_path):
    assert config.git_state(str(tmp_path)) == NOT_A_CHECKOUT  # no failure outside a checkout
    (tmp_path / "train.py").write_text("lr = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    clean = config.git_state(str(tmp_path))
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False and clean["git_diff_sha256"] is None

    (tmp_path / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert config.git_state(str(tmp_path)) == clean
    (tmp_path / "train.py").write_text("lr = 2\n")
    edited = config.git_state(str(tmp_path))
    assert edited["git_commit"] == clean["git_commit"] and edited["git_dirty"] is True
    (tmp_path / "train.py").write_text("lr = 3\n")
    other_edit = config.git_state(str(tmp_path))
    assert len(edited["git_diff_sha256"]) == 16 and other_edit["git_diff_sha256"] != edited["git_diff_sha256"]
    git(tmp_path, "add", "train.py")  # staged is still uncommitted
    assert config.git_state(str(tmp_path)) == other_edit


def test_code_version_holds_the_sources_hash_and_the_git_state():
    version = config.code_version()
    assert set(version) == {"sources_sha256", *NOT_A_CHECKOUT} and len(version["sources_sha256"]) == 16
    # config.json of runs before the git state held the sources' hash alone
    assert config.code_sources(version) == version["sources_sha256"] == config.code_sources(version["sources_sha256"])


def test_a_smoke_run_counts_as_passed_with_the_same_sources_whatever_git_says(tmp_path):
    import json

    import grid

    line = ["--model", "tiny-bert", "--data", "synthetic", "--wandb", "disabled"]
    runs = [(1, config.parse_args(line).run_name, line)]
    smoke = config.parse_args([*line, "--smoke"])
    folder = tmp_path / "smoke" / smoke.run_name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text("{}")
    sources = config.code_version()["sources_sha256"]
    for recorded, passed in [
        (dict(config.code_version(), git_dirty=True, git_diff_sha256="0" * 16), True),
        (sources, True),  # a config.json from before the git state was recorded
        (dict(config.code_version(), sources_sha256="other sources"), False),
    ]:
        (folder / "config.json").write_text(json.dumps(dict(vars(smoke), code_version=recorded)))
        assert grid.smoke_passed(str(tmp_path), runs) == ([runs[0][1]] if passed else []), recorded
