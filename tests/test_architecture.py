"""The layering (README: Architecture) is a contract: a module imports only from its own layer or below.
import-linter reads every import, function-level ones included, against pyproject.toml's contract."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_every_import_points_down_the_layers():
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "domaintune layers KEPT" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # A copy of the package where the bottom layer imports the top one: the same contract must fail.
    package = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "domaintune", package / "domaintune")
    (package / "domaintune" / "core" / "upward.py").write_text("from domaintune import api  # noqa: F401\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "domaintune.core.upward -> domaintune.api" in done.stdout
