"""``concord set``, ``verify`` and ``recover``: the workload owner's and seed-share owners'
commands against the user API."""

from __future__ import annotations

import argparse
import sys

from coordinator.cli.common import (
    UsageError,
    add_anchors,
    add_common_client,
    add_pin,
    emit,
    err,
    fingerprint,
    hash_arg,
    load_anchors,
    load_private_key,
    make_out_dir,
    pinned_deployment,
    read,
    run_bounded,
)

# The empty manifest fields `concord set` refuses unless the flag accepting the consequence is given.
_FOOT_GUN_FLAGS = {
    "immutable": ("--allow-immutable", "allow_immutable"),
    "unrecoverable": ("--allow-unrecoverable", "allow_unrecoverable"),
}


def _refuse_foot_guns(manifest_raw: bytes, args: argparse.Namespace) -> bool:
    """Refuse (exit 2, nothing sent) a manifest whose empty fields freeze the deployment or make
    it unrecoverable, unless the user accepted that by flag; returns whether it has seed shares."""
    from coordinator.client.operations import parse_manifest
    from coordinator.core.manifest_edit import findings

    manifest = parse_manifest(manifest_raw)
    refused = [
        f"{f.field} is empty: {f.consequence} (add one with `concord manifest add-owner`, "
        f"or pass {_FOOT_GUN_FLAGS[f.name][0]} to accept that)"
        for f in findings(manifest)
        if f.name in _FOOT_GUN_FLAGS and not getattr(args, _FOOT_GUN_FLAGS[f.name][1])
    ]
    if refused:
        raise UsageError("manifest refused: " + "; ".join(refused))
    return bool(manifest.seedshare_owner_keys_der)


def cmd_set(args: argparse.Namespace) -> int:
    from coordinator.client.operations import set_manifest

    manifest = read(args.manifest, "manifest")
    has_seed_shares = _refuse_foot_guns(manifest, args)
    policies = [read(p, "policy") for p in args.policy or ()]
    owner_key = load_private_key(args.owner_key, "--owner-key") if args.owner_key else None
    anchors = load_anchors(args.trust_anchors)
    pin = pinned_deployment(args)
    previous = hash_arg(args.previous, "--previous")
    out = make_out_dir(args.out)
    result = run_bounded(
        set_manifest(
            args.coordinator,
            manifest,
            policies,
            anchors=anchors,
            owner_key=owner_key,
            timeout=args.timeout,
            pin=pin,
            previous_hash=previous,
        ),
        args,
    )
    from coordinator.client.operations import write_file

    files = []
    if result.first and has_seed_shares:
        # The coordinator hands out the seed shares exactly once: save them before anything else.
        name = "seedshares.json"
        if (out / name).exists():
            name = f"seedshares-{result.transition_hash.hex()[:16]}.json"
            err(f"warning: {out / 'seedshares.json'} exists, writing the new shares to {name}")
        try:
            write_file(out / name, result.seed_share_document, 0o600)
        except OSError as exc:
            err(f"cannot write {out / name}: {exc.strerror}; the seed shares follow on stdout")
            sys.stdout.write(result.seed_share_document.decode("ascii") + "\n")
            return 1
        files.append(name)
    write_file(out / "root-ca.pem", result.root_ca_pem)
    write_file(out / "mesh-ca.pem", result.mesh_ca_pem)
    files += ["root-ca.pem", "mesh-ca.pem"]
    emit(
        args,
        {
            "transition_hash": result.transition_hash.hex(),
            "previous_transition_hash": result.previous_transition_hash.hex(),
            "first": result.first,
            "deployment_id": result.deployment_id.hex(),
            "root_ca_sha256": fingerprint(result.root_ca_pem),
            "mesh_ca_sha256": fingerprint(result.mesh_ca_pem),
            "out": str(out),
            "files": files,
        },
        [
            f"manifest set ({'first manifest' if result.first else 'update'})",
            f"transition  {result.transition_hash.hex()}",
            f"deployment  {result.deployment_id.hex()}",
            f"root CA     sha256:{fingerprint(result.root_ca_pem)}",
            f"mesh CA     sha256:{fingerprint(result.mesh_ca_pem)}",
            f"wrote       {', '.join(str(out / f) for f in files)}",
            *(
                ["keep seedshares.json and the seed-share keys safe: they recover the deployment"]
                if result.first and has_seed_shares
                else []
            ),
            *(
                ["no seed-share owners: this deployment cannot be recovered by a user"]
                if result.first and not has_seed_shares
                else []
            ),
        ],
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from coordinator.client.operations import ensure_dir, fetch_and_verify_history, write_file

    manifest = read(args.manifest, "manifest")
    anchors = load_anchors(args.trust_anchors)
    out = make_out_dir(args.out)
    history = run_bounded(
        fetch_and_verify_history(
            args.coordinator,
            manifest,
            anchors=anchors,
            timeout=args.timeout,
            pin=pinned_deployment(args),
        ),
        args,
    )
    write_file(out / "root-ca.pem", history.root_ca_pem)
    write_file(out / "mesh-ca.pem", history.mesh_ca_pem)
    mdir = ensure_dir(out / "manifests", 0o755)
    pdir = ensure_dir(out / "policies", 0o755)
    import hashlib

    entries = []
    for i, (raw, transition) in enumerate(
        zip(history.manifests, history.transitions, strict=True), start=1
    ):
        digest = hashlib.sha256(raw).hexdigest()
        write_file(mdir / f"{i:04d}-{digest}.json", raw)
        entries.append({"index": i, "sha256": digest, "transition_hash": transition.hex()})
    for digest, raw in sorted(history.policies.items()):
        write_file(pdir / digest, raw)
    emit(
        args,
        {
            "latest_transition_hash": history.latest_transition_hash.hex(),
            "deployment_id": history.deployment_id.hex(),
            "manifests": entries,
            "policies": sorted(history.policies),
            "root_ca_sha256": fingerprint(history.root_ca_pem),
            "mesh_ca_sha256": fingerprint(history.mesh_ca_pem),
            "out": str(out),
        },
        [
            f"verified: {len(entries)} manifest(s), latest is the given manifest",
            f"latest transition  {history.latest_transition_hash.hex()}",
            f"deployment         {history.deployment_id.hex()}",
            f"root CA            sha256:{fingerprint(history.root_ca_pem)}",
            f"mesh CA            sha256:{fingerprint(history.mesh_ca_pem)}",
            f"wrote              {out}/root-ca.pem, mesh-ca.pem, manifests/, policies/",
        ],
    )
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from coordinator.client.operations import recover_each

    manifest = read(args.manifest, "manifest")
    seedshares = read(args.seedshares, "--seedshares")
    key = load_private_key(args.seedshare_key, "--seedshare-key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"--seedshare-key {args.seedshare_key}: not an RSA private key")
    mlkem_key = None
    if args.seedshare_mlkem_key is not None:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        mlkem_key = load_private_key(args.seedshare_mlkem_key, "--seedshare-mlkem-key")
        if not isinstance(mlkem_key, mlkem.MLKEM768PrivateKey):
            raise UsageError(
                f"--seedshare-mlkem-key {args.seedshare_mlkem_key}: not an ML-KEM-768 key"
            )
    anchors = load_anchors(args.trust_anchors)
    addresses = tuple(dict.fromkeys(args.coordinator))
    args.coordinator = addresses[0]  # the address hints name
    result = run_bounded(
        recover_each(
            addresses,
            manifest,
            seedshares,
            key,
            anchors=anchors,
            force=args.force,
            timeout=args.timeout,
            pin=pinned_deployment(args),
            expected_latest=hash_arg(args.latest, "--latest"),
            seedshare_mlkem_key=mlkem_key,
        ),
        args,
    )
    if result.pending:
        # Threshold recovery: this coordinator keeps the share (in memory) until k arrived.
        emit(
            args,
            {
                "recovered": False,
                "shares_received": result.shares_received,
                "shares_needed": result.shares_needed,
                "transition_hash": result.transition_hash.hex(),
                "deployment_id": result.deployment_id.hex(),
            },
            [
                f"share accepted: {result.shares_received} of {result.shares_needed} "
                "(the other owners submit theirs to the same coordinator)",
                f"transition  {result.transition_hash.hex()}",
                f"deployment  {result.deployment_id.hex()}",
            ],
        )
        return 0
    emit(
        args,
        {
            "recovered": True,
            "transition_hash": result.transition_hash.hex(),
            "deployment_id": result.deployment_id.hex(),
            "restored_latest": result.restored,
        },
        [
            "coordinator recovered"
            + (" (the store's deleted latest was restored)" if result.restored else ""),
            f"transition  {result.transition_hash.hex()}",
            f"deployment  {result.deployment_id.hex()}",
        ],
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``concord set``, ``verify`` and ``recover``."""
    # set
    p = sub.add_parser(
        "set",
        help="set or update the manifest",
        description="Verify the coordinator against MANIFEST's coordinator policy and reference "
        "values, then set MANIFEST. Writes root-ca.pem, mesh-ca.pem and, on the first manifest, "
        "seedshares.json to --out. An update needs --owner-key.",
    )
    add_common_client(p)
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument(
        "--policy",
        action="extend",
        nargs="+",
        metavar="FILE",
        help="policy documents referenced by the manifest (all of them)",
    )
    p.add_argument("--owner-key", metavar="KEY.pem", help="workload owner key (updates)")
    p.add_argument(
        "--allow-immutable",
        action="store_true",
        help="accept a manifest without WorkloadOwnerKeyDigests: it can never be updated",
    )
    p.add_argument(
        "--allow-unrecoverable",
        action="store_true",
        help="accept a manifest without SeedshareOwnerPubKeys: once every coordinator has lost "
        "its state, the deployment can never be recovered",
    )
    add_anchors(p)
    add_pin(p)
    p.add_argument(
        "--previous",
        metavar="HASH",
        help="update only if the latest transition is exactly HASH (compare-and-swap)",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_set)

    # verify
    p = sub.add_parser(
        "verify",
        help="verify the coordinator and its manifest history",
        description="Attest the coordinator against MANIFEST, fetch the history, require the "
        "latest manifest to equal MANIFEST byte for byte, re-verify the chain and its signature. "
        "Writes root-ca.pem, mesh-ca.pem, manifests/ and policies/ to --out.",
    )
    add_common_client(p)
    p.add_argument("manifest", metavar="MANIFEST")
    add_anchors(p)
    add_pin(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_verify)

    # recover
    p = sub.add_parser(
        "recover",
        help="recover a coordinator with a seed share",
        description="Verify the coordinator against MANIFEST (the latest manifest you hold), "
        "then send it the seed (or, with a threshold, your share), sealed to its attested key. "
        "Repeat -c to submit to every coordinator of the deployment: each keeps its own partial "
        "shares, the first with k completes and the others recover from it.",
    )
    add_common_client(p, several=True)
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--seedshares", required=True, metavar="FILE", help="seedshares.json")
    p.add_argument("--seedshare-key", required=True, metavar="KEY.pem", help="RSA private key")
    p.add_argument(
        "--seedshare-mlkem-key",
        metavar="KEY.pem",
        help="ML-KEM-768 private key (PKCS#8 PEM), when the manifest lists one for you in "
        "SeedshareOwnerMLKEMKeys: your share is wrapped for both keys",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recover even while a ready peer exists (mints a new mesh key: splits the mesh)",
    )
    add_anchors(p)
    add_pin(p)
    p.add_argument(
        "--latest",
        metavar="HASH",
        help="the latest transition to recover when the store lost its latest (default: "
        "MANIFEST's first-generation transition); otherwise it must equal the store's",
    )
    p.set_defaults(func=cmd_recover)
