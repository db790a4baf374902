"""The layers of DESIGN §1 are an import-linter contract (pyproject.toml); ``./hack/test`` runs it.
These tests show that the contract holds for the tree and that it catches a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the packages found under ``root`` (ahead of the installed ones)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(tmp_path: Path) -> Path:
    for name in ("coordinator", "attestation"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_layers() -> None:
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("coordinator/core/manifest.py", "from coordinator.service import server", "Layers"),
        ("coordinator/store/file.py", "from coordinator.core import state", "Layers"),
        ("coordinator/cluster/recovery.py", "from coordinator.service import server", "Layers"),
        ("coordinator/core/ca.py", "import grpc", "pure core"),
        ("attestation/verify.py", "import coordinator.core.manifest", "attestation knows nothing"),
        ("coordinator/client/channel.py", "import prometheus_client", "never loads the server"),
    ],
)
def test_a_wrong_import_breaks_the_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    with (root / module).open("a") as f:
        f.write(f"\n{wrong_import}  # the wrong way\n")
    proc = lint_imports(root)
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), proc.stdout
