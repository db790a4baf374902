"""The distribution installs and imports without the source tree (issue: skeleton acceptance)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_plain_install_imports_without_repo_on_path(tmp_path: Path) -> None:
    """`pip install .` into a fresh virtualenv; imports work from outside the checkout.

    Dependencies are taken from this test run's environment (a .pth line pointing at its
    site-packages) so the test needs no network; the project itself is built and installed
    from the checkout as a regular wheel, not in editable mode.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Our site-packages holds the editable finder for this repo; plain path entries added by a
    # .pth are not scanned for further .pth files, so only the dependencies become visible.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    probe = (
        "import coordinator, attestation.anchors\n"
        "from coordinator.core.seedengine import SeedEngine\n"
        "assert 'site-packages' in coordinator.__file__, coordinator.__file__\n"
        "attestation.anchors.production()\n"
        "print(coordinator.__file__)\n"
    )
    out = subprocess.run(
        [str(py), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert str(site) in out.stdout
    concord = venv / "bin" / "concord"
    assert concord.exists()
    help_text = subprocess.run(
        [str(concord), "--help"], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "serve" in help_text.stdout
