"""Run settings that need no torch: the code version that smoke results are valid for.

(Importing this module is cheap: grid.py and report.py use it without loading torch.)
"""
import glob
import hashlib
import os

ROOT = os.path.dirname(os.path.abspath(__file__))


def code_version() -> str:
    """A hash of the toolkit's Python sources: a smoke run passed with other code is not trusted."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]
