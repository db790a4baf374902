"""The README's walkthrough, run literally: the ``sh`` blocks between the walkthrough markers of
README.md run in one ``bash`` in an empty
directory, ``concord`` being this checkout's command, on free loopback ports. Then every step's
result is checked: keys, manifests, the seed shares, two joined workloads, a verified history of
two manifests, and a coordinator that the walkthrough itself stopped."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from coordinator.core.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
START = "<!-- walkthrough:start -->"
END = "<!-- walkthrough:end -->"
_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)

pytestmark = pytest.mark.timeout(300)


def walkthrough_source() -> Path:
    """The README: the walkthrough a newcomer reads is the one the test runs."""
    return REPO / "README.md"


def extract_blocks(text: str) -> list[str]:
    """The ``sh`` fenced blocks between the markers, in order."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError("want exactly one walkthrough start and end marker")
    section = text[text.index(START) + len(START) : text.index(END)]
    return [m.group(1) for m in _SH_BLOCK.finditer(section)]


def test_extract_blocks() -> None:
    text = f"```sh\nnot this\n```\n{START}\nprose\n```sh\na\nb \\\n  c\n```\n```json\n{{}}\n```\n"
    text += f"```sh\nd\n```\n{END}\n```sh\nnor this\n```\n"
    assert extract_blocks(text) == ["a\nb \\\n  c\n", "d\n"]
    with pytest.raises(ValueError):
        extract_blocks("no markers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def script(blocks: list[str], steps: Path) -> str:
    """The blocks as one script that records each finished step (and stops at the first error)."""
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks, start=1):
        lines += [f"# --- step {i}", block.rstrip("\n"), f"echo {i} >> {shlex.quote(str(steps))}"]
    return "\n".join(lines) + "\n"


def _tail(path: Path, n: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_readme_walkthrough(tmp_path: Path) -> None:
    source = walkthrough_source()
    blocks = extract_blocks(source.read_text(encoding="utf-8"))
    text = "\n".join(blocks)
    for needed in (
        "concord mock-tee init",
        "concord keys new owner",
        "concord manifest new",
        "concord serve",
        "concord set",
        "--owner-key",
        "concord join",
        "concord verify",
        "kill",
    ):
        assert needed in text, f"{source.name}: the walkthrough no longer runs {needed!r}"

    work = tmp_path / "work"  # the newcomer's empty directory
    work.mkdir()
    aux = tmp_path / "aux"
    aux.mkdir()
    shim = aux / "bin"
    shim.mkdir()
    (shim / "concord").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m coordinator.cli "$@"\n'
    )
    (shim / "concord").chmod(0o755)
    steps = aux / "steps"
    (aux / "walkthrough.sh").write_text(script(blocks, steps))
    env = {k: v for k, v in os.environ.items() if k != "CONCORD_DEBUG"}
    env.update(
        PATH=f"{shim}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=str(REPO),
        USER_API=f"127.0.0.1:{free_port()}",
        MESH_API=f"127.0.0.1:{free_port()}",
        HTTP_API=f"127.0.0.1:{free_port()}",
    )
    out, err = aux / "stdout", aux / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            ["bash", str(aux / "walkthrough.sh")],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # the background coordinator shares this process group
        )
        try:
            try:
                code: int | None = proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                code = None  # reported below with the step it hung in
            leftover = _group_alive(proc.pid)  # before the clean-up below hides it
        finally:
            # Whatever happened, nothing the walkthrough started outlives the test.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                    time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    done = steps.read_text().split() if steps.exists() else []
    failed_step = len(done) + 1
    report = (
        f"walkthrough from {source.name}: exit {code}, failed in step {failed_step}:\n"
        f"{blocks[failed_step - 1] if failed_step <= len(blocks) else ''}\n"
        f"--- stderr\n{_tail(err)}\n--- coordinator.log\n{_tail(work / 'coordinator.log')}"
    )
    assert code == 0, report
    assert done == [str(i) for i in range(1, len(blocks) + 1)], report

    # Step results. Keys: private, PEM.
    assert mode(work / "owner.pem") == 0o600
    assert mode(work / "seedshare.pem") == 0o600
    assert (work / "tee" / "reference-values.json").is_file()
    # The manifests: valid for the coordinator, complete, and v2 extends v1.
    v1 = Manifest.parse((work / "manifest.json").read_bytes())
    v2 = Manifest.parse((work / "manifest-v2.json").read_bytes())
    assert len(v1.policies) == 2 and len(v2.policies) == 3
    assert len(v1.owner_key_digests) == 1 and len(v1.seedshare_owner_keys) == 1
    assert v1.reference_values.snp and v1.reference_values.tdx
    assert set(v1.policies) < set(v2.policies)
    # set: the seed shares (once, private) and the CAs.
    owner_files = work / "owner-files"
    assert mode(owner_files / "seedshares.json") == 0o600
    assert not list(owner_files.glob("seedshares-*.json"))  # the update wrote no second document
    root_ca = (owner_files / "root-ca.pem").read_bytes()
    # join: both workloads have their files under the deployment's root CA.
    for name, sans in (("web", {"web", "10.0.0.1"}), ("batch", {"batch"})):
        wl = work / name
        for f in ("key.pem", "cert.pem", "chain.pem", "mesh-ca.pem", "root-ca.pem"):
            assert (wl / f).is_file(), f"{name}/{f}"
        assert mode(wl / "key.pem") == 0o600
        assert (wl / "root-ca.pem").read_bytes() == root_ca
        cert = x509.load_pem_x509_certificate((wl / "cert.pem").read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(ext.get_values_for_type(x509.DNSName))
        names |= {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
        assert sans <= names, (name, names)
    assert len((work / "web" / "workload-secret").read_bytes()) > 0
    assert not (work / "batch" / "workload-secret").exists()  # no secret ID in its entry
    # verify: a history of the two manifests, the latest byte for byte.
    history = sorted((work / "verified" / "manifests").iterdir())
    assert [p.read_bytes() for p in history] == [v1.raw, v2.raw]
    # The walkthrough stopped its coordinator itself (and `wait` saw it exit 0).
    serving = json.loads((work / "coordinator.out").read_text().splitlines()[0])
    assert serving["event"] == "serving"
    assert not leftover, "the walkthrough left a process running"
    fd = os.open(work / "store" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no process holds the store any more
    finally:
        os.close(fd)
