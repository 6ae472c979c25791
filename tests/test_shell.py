"""The bash files: run_grid.sh, tmux_launch.sh, grid_lib.sh and the SLURM job templates parse (bash -n)
and pass shellcheck where it is installed (Debian: apt-get install shellcheck; .ci/run installs it)."""

import glob
import itertools
import os
import re
import shutil
import subprocess

import pytest
from helpers import ROOT

BASH_FILES = [
    "run_grid.sh",
    "tmux_launch.sh",
    "grid_lib.sh",
    *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "slurm_jobs", "*.sbatch"))),
]


def test_the_slurm_job_templates_are_there():
    assert {"slurm_jobs/smoke.sbatch", "slurm_jobs/runs.sbatch", "slurm_jobs/report.sbatch"} <= set(BASH_FILES)


@pytest.mark.parametrize("path", BASH_FILES)
def test_bash_parses(path):
    check = subprocess.run(["bash", "-n", path], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("path", BASH_FILES)
def test_shellcheck_passes(path):
    # -x follows `source ./grid_lib.sh`, so the variables the library reads and sets are checked too
    check = subprocess.run(["shellcheck", "-x", path], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def usage_comment(path: str) -> str:
    """The comment block at the top of a script (after the #! line), as --help should print it."""
    with open(os.path.join(ROOT, path)) as f:
        lines = f.read().splitlines()[1:]
    block = itertools.takewhile(lambda line: line.startswith("#"), lines)
    return "".join(re.sub(r"^# ?", "", line) + "\n" for line in block)


@pytest.mark.parametrize("path", ["run_grid.sh", "tmux_launch.sh"])
def test_help_prints_the_whole_usage_comment(path):
    out = subprocess.run(["bash", path, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == usage_comment(path), out.stdout + out.stderr
    if path == "run_grid.sh":  # its last usage lines, on stages
        assert out.stdout.endswith("is not started (counted failed) if NAME did not finish.\n"), out.stdout
