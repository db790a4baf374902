"""``concord manifest``: build and edit a manifest from files instead of hand-computed digests.

Argument parsing and printing only; the edits are :mod:`coordinator.core.manifest_edit`, which
validates every result with the coordinator's own parser. Files are replaced atomically (temp
file + rename) and keep their mode; a refused edit leaves the file untouched (exit 2).
"""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

from coordinator.cli.common import UsageError, emit, read
from coordinator.core import manifest_edit as edit
from coordinator.core.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError

MAX_INPUT = 1 << 20


def _read_small(path: str, what: str, limit: int = MAX_INPUT) -> bytes:
    data = read(path, what)
    if len(data) > limit:
        raise UsageError(f"{what} {path}: larger than {limit} bytes")
    return data


def _write(path: Path, raw: bytes, mode: int = 0o644) -> None:
    from coordinator.client.operations import write_file

    try:
        write_file(path, raw, mode)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def _edit(args: argparse.Namespace, change: Any) -> int:
    """Read MANIFEST, apply ``change(raw) -> Edit``, write it back atomically, say what changed."""
    path = Path(args.manifest)
    raw = _read_small(args.manifest, "manifest", MAX_MANIFEST_BYTES)
    try:
        result: edit.Edit = change(raw)
    except edit.ManifestEditError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if result.changed:
        _write(path, result.raw, stat.S_IMODE(path.stat().st_mode))
    print(f"{path}: {result.what}" + ("" if result.changed else " (unchanged)"), flush=True)
    return 0


def _policy_file(path: str) -> bytes:
    return read(path, "policy")


# --- commands ------------------------------------------------------------------------------------


def cmd_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"--out {out}: exists (use --force to replace it)")
    policy = _policy_file(args.coordinator_policy)
    try:
        raw = edit.new_manifest(policy, sans=args.san or (), secret_id=args.secret_id)
    except edit.ManifestEditError as exc:
        raise UsageError(str(exc)) from None
    _write(out, raw)
    print(f"{out}: new manifest, coordinator policy {edit.policy_hash(policy)}", flush=True)
    print(
        "next: concord manifest add-policy (workloads), add-reference (reference values), "
        "add-owner (owner and seed-share keys)",
        flush=True,
    )
    return 0


def cmd_add_policy(args: argparse.Namespace) -> int:
    policy = _policy_file(args.policy)
    if args.replace_coordinator and args.role != "coordinator":
        raise UsageError("--replace-coordinator needs --role coordinator")

    def change(raw: bytes) -> edit.Edit:
        try:
            return edit.add_policy(
                raw,
                policy,
                sans=args.san or (),
                secret_id=args.secret_id,
                coordinator=args.role == "coordinator",
                replace_coordinator=args.replace_coordinator,
            )
        except edit.CoordinatorConflict as exc:
            raise edit.CoordinatorConflict(exc.field, f"{exc.why}: --replace-coordinator") from None

    return _edit(args, change)


def cmd_remove_policy(args: argparse.Namespace) -> int:
    target = args.policy
    if Path(target).is_file():
        target = edit.policy_hash(_policy_file(target))
    return _edit(args, lambda raw: edit.remove_policy(raw, target))


def _json_file(path: str, what: str) -> Any:
    data = _read_small(path, what)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} {path}: not valid JSON ({exc})") from None


def cmd_add_reference(args: argparse.Namespace) -> int:
    if args.from_mock is not None:
        from attestation.providers.mock import REFERENCE_FILE

        source, tee = str(Path(args.from_mock) / REFERENCE_FILE), None
    elif args.values is not None:
        source, tee = args.values, None
    else:
        source, tee = (args.snp, "snp") if args.snp is not None else (args.tdx, "tdx")
    doc = _json_file(source, "reference values")
    try:
        values = edit.reference_input(doc, tee, source)
    except edit.ManifestEditError as exc:
        raise UsageError(str(exc)) from None
    return _edit(args, lambda raw: edit.add_references(raw, values, replace=args.replace))


def cmd_add_owner(args: argparse.Namespace) -> int:
    if not (args.owner_key or args.owner_digest or args.seedshare_key):
        raise UsageError("give --owner-key, --owner-digest or --seedshare-key (one or more)")
    try:
        digests = [edit.owner_key_digest(_read_small(p, "--owner-key"), p) for p in args.owner_key]
        digests += list(args.owner_digest)
        shares = [
            edit.seedshare_public_key_hex(_read_small(p, "--seedshare-key"), p)
            for p in args.seedshare_key
        ]
    except edit.ManifestEditError as exc:
        raise UsageError(str(exc)) from None

    def change(raw: bytes) -> edit.Edit:
        results = []
        if digests:
            results.append(edit.add_owner_digests(raw, digests))
            raw = results[-1].raw
        if shares:
            results.append(edit.add_seedshare_owners(raw, shares))
            raw = results[-1].raw
        return edit.Edit(raw, any(r.changed for r in results), ", ".join(r.what for r in results))

    return _edit(args, change)


def cmd_show(args: argparse.Namespace) -> int:
    raw = _read_small(args.manifest, "manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = Manifest.parse(raw)
    except ManifestError as exc:
        raise UsageError(f"{args.manifest}: {exc}") from None
    info = edit.describe(manifest)
    lines = [f"manifest {args.manifest}", f"  sha256        {info['sha256']}", "  policies"]
    for p in info["policies"]:
        role = "coordinator" if p["role"] == "coordinator" else "workload"
        lines.append(f"    {p['sha256']}  {role}")
        lines.append(f"      SANs              {', '.join(p['sans']) or '(none)'}")
        lines.append(f"      WorkloadSecretID  {p['workload_secret_id'] or '(none: no secret)'}")
    lines.append("  reference values")
    for r in info["reference_values"]:
        what = (
            f"{r['product']} measurement {r['measurement']}"
            if r["tee"] == "snp"
            else f"MrTd {r['mr_td']}"
        )
        lines.append(f"    {r['tee']}[{r['index']}]  {what}")
    if not info["reference_values"]:
        lines.append("    (none)")
    lines.append("  workload owners (WorkloadOwnerKeyDigests)")
    lines += [f"    {d}" for d in info["workload_owner_key_digests"]] or ["    (none)"]
    lines.append("  seed-share owners (SeedshareOwnerPubKeys)")
    lines += [
        f"    RSA-{s['bits']}  sha256 of the key {s['sha256']}" for s in info["seedshare_owners"]
    ] or ["    (none)"]
    for f in info["findings"]:
        lines.append(f"warning: {f['field']}: {f['consequence']}")
    emit(args, info, lines)
    return 0


# --- parser --------------------------------------------------------------------------------------


def _policy_entry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--san",
        action="append",
        metavar="NAME",
        help="subject alternative name of the mesh certificate: DNS name (wildcards allowed), "
        "IP address or URI; repeat for more",
    )
    p.add_argument(
        "--secret-id",
        default="",
        metavar="ID",
        help="WorkloadSecretID: workloads with the same ID get the same workload secret "
        "(default: none, no secret)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``concord manifest`` to the ``concord`` subcommands."""
    top = sub.add_parser(
        "manifest",
        help="build and edit a manifest from policy files, keys and reference values",
        description="Build a manifest without computing digests by hand. Every edit is checked "
        "with the coordinator's own parser and written atomically; a refused edit changes "
        "nothing and exits 2.",
    )
    msub = top.add_subparsers(dest="manifest_command", metavar="COMMAND", required=True)

    p = msub.add_parser(
        "new",
        help="start a manifest with the coordinator policy",
        description="Write a manifest that names the coordinator's policy (the file the "
        "coordinator's CVM is launched with) and leaves the other fields empty.",
    )
    p.add_argument("--coordinator-policy", required=True, metavar="FILE")
    _policy_entry_flags(p)
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_new)

    p = msub.add_parser(
        "add-policy",
        help="admit a workload policy (or replace its entry)",
        description="Admit workloads launched with POLICY_FILE: its SHA-256 becomes a key of "
        "Policies with the given SANs and secret ID. A policy already listed gets the new entry.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("policy", metavar="POLICY_FILE")
    _policy_entry_flags(p)
    p.add_argument(
        "--role",
        choices=("coordinator",),
        help="make this the coordinator policy (exactly one policy has this role)",
    )
    p.add_argument(
        "--replace-coordinator",
        action="store_true",
        help="with --role coordinator: remove the current coordinator policy (an upgrade)",
    )
    p.set_defaults(func=cmd_add_policy)

    p = msub.add_parser(
        "remove-policy",
        help="stop admitting a workload policy",
        description="Remove a workload policy, given as its file or its SHA-256 in hex.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("policy", metavar="POLICY_FILE|SHA256")
    p.set_defaults(func=cmd_remove_policy)

    p = msub.add_parser(
        "add-reference",
        help="add reference values (what a CVM must measure)",
        description="Append reference values. --snp/--tdx FILE: one reference object of that "
        "TEE (or an array of them); --values FILE: a whole ReferenceValues object "
        '{"snp": [...], "tdx": [...]}; --from-mock DIR: the values `concord mock-tee init DIR` '
        "wrote. Entries already present are not added twice.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--snp", metavar="FILE", help="SNP reference JSON")
    source.add_argument("--tdx", metavar="FILE", help="TDX reference JSON")
    source.add_argument("--values", metavar="FILE", help="ReferenceValues JSON")
    source.add_argument("--from-mock", metavar="DIR", help="software TEE directory")
    p.add_argument(
        "--replace",
        action="store_true",
        help="drop the existing entries of each TEE the input has values for",
    )
    p.set_defaults(func=cmd_add_reference)

    p = msub.add_parser(
        "add-owner",
        help="add workload owners and seed-share owners from their keys",
        description="--owner-key: a key that may sign manifest updates (its SPKI SHA-256 goes "
        "into WorkloadOwnerKeyDigests). --seedshare-key: an RSA key that receives a seed share "
        "on the first manifest (its PKCS#1 DER goes into SeedshareOwnerPubKeys). Public or "
        "private PEM; only the public part is used.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--owner-key", action="append", default=[], metavar="KEY.pem")
    p.add_argument(
        "--owner-digest",
        action="append",
        default=[],
        metavar="HEX",
        help="an owner digest as printed by `concord keys digest`",
    )
    p.add_argument("--seedshare-key", action="append", default=[], metavar="KEY.pem")
    p.set_defaults(func=cmd_add_owner)

    p = msub.add_parser(
        "show",
        help="print a readable summary and warnings",
        description="Validate MANIFEST like the coordinator does and summarise it, with a "
        "warning for each empty field that has a consequence.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_show)
