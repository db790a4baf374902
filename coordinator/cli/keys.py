"""``concord keys``: create the keys a manifest names and print what the manifest stores.

Argument parsing and printing only; the encodings come from :mod:`coordinator.core.manifest_edit`.
Private keys are written unencrypted as PKCS#8 PEM with mode 0600 and never overwrite a file
unless ``--force`` is given (a lost owner key freezes the deployment, a lost seed-share key
makes it unrecoverable).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coordinator.cli.common import UsageError, emit, read
from coordinator.core.manifest_edit import (
    InvalidKeyInput,
    owner_key_digest,
    public_key_from_pem,
    seedshare_public_key_hex,
)

OWNER_TYPES = ("p256", "p384", "ed25519")
SEEDSHARE_BITS = (2048, 3072, 4096)
MAX_KEY_FILE = 64 * 1024


def _generate(kind: str, key_type: str, bits: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if kind == "seedshare":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "seedshare-mlkem":
        from cryptography.hazmat.primitives.asymmetric import mlkem

        return mlkem.MLKEM768PrivateKey.generate()
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP384R1() if key_type == "p384" else ec.SECP256R1())


def _pkcs8(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _key_file(path: str) -> bytes:
    data = read(path, "key")
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"key {path}: larger than {MAX_KEY_FILE} bytes")
    return data


def cmd_new(args: argparse.Namespace) -> int:
    from coordinator.client.operations import write_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"--out {out}: exists (use --force to replace it; the old key is lost)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no such directory {out.parent}")
    if args.kind != "seedshare" and args.bits is not None:
        raise UsageError("--bits applies to seedshare keys only")
    if args.kind != "owner" and args.type is not None:
        raise UsageError("--type applies to owner keys only (seed-share keys are RSA)")
    key = _generate(args.kind, args.type or "p256", args.bits or 3072)
    pem = _pkcs8(key)
    try:
        write_file(out, pem, 0o600)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from None
    if args.kind == "owner":
        field, value = "WorkloadOwnerKeyDigests", owner_key_digest(pem)
        hint = f"concord manifest add-owner MANIFEST --owner-key {out}"
    elif args.kind == "seedshare-mlkem":
        from cryptography.hazmat.primitives import serialization

        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        field, value = "SeedshareOwnerMLKEMKeys", raw.hex()
        hint = (
            "SeedshareOwnerMLKEMKeys: {<your seedshare key's PKCS#1 hex>: <this value>} "
            "(before the first manifest)"
        )
    else:
        field, value = "SeedshareOwnerPubKeys", seedshare_public_key_hex(pem)
        hint = f"concord manifest add-owner MANIFEST --seedshare-key {out}"
    emit(
        args,
        {"out": str(out), "kind": args.kind, "field": field, "value": value},
        [
            f"wrote {args.kind} key {out} (mode 0600): keep it secret and backed up",
            f"{field} entry: {value if len(value) <= 64 else value[:64] + '…'}",
            f"add it to a manifest: {hint}",
        ],
    )
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    pem = _key_file(args.file)
    try:
        owner = owner_key_digest(pem, args.file)
    except InvalidKeyInput as exc:
        raise UsageError(str(exc)) from None
    try:
        seedshare: str | None = seedshare_public_key_hex(pem, args.file)
    except InvalidKeyInput:
        seedshare = None  # not RSA (or outside 2048..8192 bit): cannot be a seed-share owner
    lines = [f"WorkloadOwnerKeyDigests entry: {owner}"]
    if seedshare is not None:
        lines.append(f"SeedshareOwnerPubKeys entry:   {seedshare}")
    emit(args, {"owner_key_digest": owner, "seedshare_public_key": seedshare}, lines)
    return 0


def cmd_public(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from coordinator.client.operations import write_file

    pem = _key_file(args.file)
    try:
        public = public_key_from_pem(pem, args.file)
    except InvalidKeyInput as exc:
        raise UsageError(str(exc)) from None
    out_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if args.out is None:
        print(out_pem.decode("ascii"), end="", flush=True)
        return 0
    try:
        write_file(Path(args.out), out_pem, 0o644)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: {exc.strerror or exc}") from None
    print(f"wrote public key {args.out}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``concord keys`` to the ``concord`` subcommands."""
    keys = sub.add_parser(
        "keys",
        help="create owner and seed-share keys; print what a manifest stores",
        description="Keys of the people who control a deployment: the workload owner (signs "
        "manifest updates) and seed-share owners (recover the deployment when every coordinator "
        "lost its state). The manifest stores digests, not keys: see `concord manifest add-owner`.",
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    p = ksub.add_parser(
        "new",
        help="create a private key (PKCS#8 PEM, mode 0600)",
        description="Create an owner key (EC P-256 by default; signs manifest updates) or a "
        "seed-share key (RSA, 3072 bit by default; receives a seed share on the first manifest).",
    )
    p.add_argument(
        "kind",
        choices=("owner", "seedshare", "seedshare-mlkem"),
        help="what the key is for (seedshare-mlkem: ML-KEM-768, wraps a seed share "
        "post-quantum next to the seedshare RSA key)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the private key")
    p.add_argument("--type", choices=OWNER_TYPES, help="owner key type (default p256)")
    p.add_argument(
        "--bits", type=int, choices=SEEDSHARE_BITS, help="seed-share RSA size (default 3072)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_new)

    p = ksub.add_parser(
        "digest",
        help="print a key's manifest entries",
        description="Print what a manifest lists for this key (public or private PEM): its "
        "WorkloadOwnerKeyDigests entry (SHA-256 of the SPKI DER) and, for RSA keys, its "
        "SeedshareOwnerPubKeys entry (hex PKCS#1 DER).",
    )
    p.add_argument("file", metavar="KEY.pem")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_digest)

    p = ksub.add_parser(
        "public",
        help="print or write a key's public part",
        description="Write the public key (SPKI PEM) of a private key, to hand to whoever "
        "builds the manifest without handing over the private key.",
    )
    p.add_argument("file", metavar="KEY.pem")
    p.add_argument("--out", metavar="FILE", help="write here instead of printing")
    p.set_defaults(func=cmd_public)
