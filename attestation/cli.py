"""``concord evidence inspect|verify`` and ``concord mock-tee init|evidence``: a thin CLI layer.

Everything here is argument handling, file I/O and printing; parsing and verification are the
library's (:mod:`attestation.evidence`, :mod:`attestation.snp`, :mod:`attestation.tdx`).

Exit codes: 0 verified / done, 1 evidence rejected (``rejected: <reason>: <detail>``), 2 usage
error (bad flag, unreadable file, invalid reference values or trust anchors). Verdicts go to
stdout, usage errors to stderr; neither ever prints a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation import anchors as anchors_mod
from attestation.errors import EvidenceRejected, InvalidReferenceValues, SizeLimitExceeded
from attestation.evidence import MAX_ENVELOPE, Evidence, from_raw, sniff
from attestation.reference import (
    SNP_PRODUCTS,
    TDX_TCB_STATUSES,
    ReferenceValues,
    SnpTcb,
    parse_reference_values,
)

_T = TypeVar("_T")

MAX_AUX_FILE = 1024 * 1024  # --vcek, --cert-chain, --collateral, --reference-values, --policy

# Without --reference-values the TDX TCB status is reported, not judged, except "Revoked":
# Intel revoking the TCB means the platform's keys no longer vouch for anything.
AUTHENTICITY_TCB_STATUSES = tuple(s for s in TDX_TCB_STATUSES if s != "Revoked")


class UsageError(Exception):
    """A problem with how the command was called (exit 2), not with the evidence."""


class InputTooLarge(UsageError):
    pass


# --- argument types --------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """ISO-8601 date or date-time; a value without a UTC offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (e.g. 2025-06-01 or 2025-06-01T12:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _hex_arg(size: int | tuple[int, ...], name: str) -> Callable[[str], bytes]:
    sizes = (size,) if isinstance(size, int) else size

    def parse(text: str) -> bytes:
        if not set(text.lower()) <= set("0123456789abcdef") or len(text) % 2:
            raise argparse.ArgumentTypeError(f"{name}: not valid hex")
        raw = bytes.fromhex(text)
        if len(raw) not in sizes:
            want = " or ".join(str(s) for s in sizes)
            raise argparse.ArgumentTypeError(f"{name}: must be {want} bytes, got {len(raw)}")
        return raw

    return parse


# --- file input ------------------------------------------------------------------------------


def read_input(path: str, what: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes of ``path`` ('-': stdin); UsageError on I/O failure."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if len(data) > limit:
        raise InputTooLarge(f"{what} {path}: larger than {limit} bytes")
    return data


def read_evidence(path: str) -> bytes:
    """The evidence file; oversized input is a rejection (size_limit), not a usage error."""
    try:
        return read_input(path, "FILE", MAX_ENVELOPE)
    except InputTooLarge:
        raise SizeLimitExceeded(f"input is larger than {MAX_ENVELOPE} bytes") from None


def _quietly(load: Callable[[bytes], _T], data: bytes) -> _T:
    """Run a cryptography loader; AMD VCEKs have serial 0, which cryptography warns about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(data)


def load_certificates(data: bytes, what: str) -> list[bytes]:
    """DER certificates of a DER file or a PEM bundle (in file order)."""
    if b"-----BEGIN" in data:
        try:
            certs = _quietly(x509.load_pem_x509_certificates, data)
        except ValueError:
            raise UsageError(f"{what}: not a PEM certificate bundle") from None
        return [c.public_bytes(serialization.Encoding.DER) for c in certs]
    try:
        _quietly(x509.load_der_x509_certificate, data)
    except ValueError:
        raise UsageError(f"{what}: not a DER or PEM certificate") from None
    return [data]


def load_reference_values(path: str) -> ReferenceValues:
    """A ``{"snp": [...], "tdx": [...]}`` file, or a manifest (its ``ReferenceValues``)."""
    raw = read_input(path, "--reference-values", MAX_AUX_FILE)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"--reference-values {path}: not valid JSON") from None
    try:
        if isinstance(obj, dict) and "ReferenceValues" in obj:
            return parse_reference_values(obj["ReferenceValues"], "ReferenceValues")
        return parse_reference_values(obj, "ReferenceValues")
    except InvalidReferenceValues as exc:
        raise UsageError(f"--reference-values {path}: {exc}") from None


def load_anchors(spec: str) -> anchors_mod.TrustAnchors:
    try:
        return anchors_mod.from_spec(spec)
    except anchors_mod.AnchorError as exc:
        raise UsageError(f"--trust-anchors: {exc}") from None


def to_evidence(data: bytes, tee: str | None) -> Evidence:
    """Envelope or raw report/quote (auto-detected) as an Evidence; ``tee`` forces raw input."""
    try:
        kind = sniff(data)
    except EvidenceRejected:
        if tee is None:
            raise
        kind = tee
    if kind == "envelope":
        ev = Evidence.decode(data)
        if tee is not None and ev.tee != tee:
            raise UsageError(f"--tee {tee}: the envelope holds {ev.tee} evidence")
        return ev
    if tee is not None and kind != tee:
        raise UsageError(f"--tee {tee}: the input is a raw {kind} report/quote")
    return from_raw(data, kind)


# --- output ----------------------------------------------------------------------------------


def _tcb_json(tcb: SnpTcb, raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bootloader": tcb.bootloader,
        "tee": tcb.tee,
        "snp": tcb.snp,
        "microcode": tcb.microcode,
    }
    if tcb.fmc is not None:
        out["fmc"] = tcb.fmc
    out["raw"] = raw.hex()
    return out


def _emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
        return
    for key, value in obj.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        elif value is None:
            value = "-"
        print(f"{key}: {value}")


def _cert_summary(der: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(der).hexdigest()
    try:
        cert = _quietly(x509.load_der_x509_certificate, der)
        return {
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": digest,
        }
    except Exception:  # inspect shows what it can; malformed DER is not an error here
        return {"sha256": digest, "error": "not a DER X.509 certificate"}


# --- inspect ---------------------------------------------------------------------------------


def inspect_snp(report: bytes) -> dict[str, Any]:
    """Every field of an SNP report, parsed strictly but not verified."""
    from attestation.snp.report import parse_report
    from attestation.snp.tcb import decode_tcb

    r = parse_report(report)
    product = r.cpuid_product
    layout = product or "Milan"  # v2 reports (no CPUID) are Milan or Genoa: same TCB layout

    def tcb(raw: bytes, name: str) -> dict[str, Any]:
        try:
            return _tcb_json(decode_tcb(raw, layout, name), raw)
        except EvidenceRejected as exc:
            return {"raw": raw.hex(), "error": str(exc)}

    return {
        "tee": "snp",
        "version": r.version,
        "product": product,
        "guest_svn": r.guest_svn,
        "policy": f"0x{r.policy.raw:x}",
        "policy_flags": sorted(r.policy.flags),
        "policy_abi": f"{r.policy.abi_major}.{r.policy.abi_minor}",
        "debug": r.policy.debug,
        "family_id": r.family_id.hex(),
        "image_id": r.image_id.hex(),
        "vmpl": r.vmpl,
        "signature_algo": r.signature_algo,
        "current_tcb": tcb(r.current_tcb_raw, "current_tcb"),
        "platform_info": f"0x{r.platform_info.raw:x}",
        "platform_flags": sorted(r.platform_info.flags)
        + [f"{name} (unknown)" for name in r.platform_info.unknown_names],
        "author_key_en": r.author_key_en,
        "mask_chip_key": r.mask_chip_key,
        "signer": r.signer,
        "report_data": r.report_data.hex(),
        "measurement": r.measurement.hex(),
        "host_data": r.host_data.hex(),
        "id_key_digest": r.id_key_digest.hex(),
        "author_key_digest": r.author_key_digest.hex(),
        "report_id": r.report_id.hex(),
        "report_id_ma": r.report_id_ma.hex(),
        "reported_tcb": tcb(r.reported_tcb_raw, "reported_tcb"),
        "cpuid": None
        if r.cpuid_fam_id is None
        else {"family": r.cpuid_fam_id, "model": r.cpuid_mod_id, "stepping": r.cpuid_step},
        "chip_id": r.chip_id.hex(),
        "committed_tcb": tcb(r.committed_tcb_raw, "committed_tcb"),
        "current_version": f"{r.current_major}.{r.current_minor}.{r.current_build}",
        "committed_version": f"{r.committed_major}.{r.committed_minor}.{r.committed_build}",
        "launch_tcb": tcb(r.launch_tcb_raw, "launch_tcb"),
        "launch_mit_vector": r.launch_mit_vector,
        "current_mit_vector": r.current_mit_vector,
    }


def inspect_tdx(quote: bytes) -> dict[str, Any]:
    """Header, body and certification data of a TDX quote, parsed but not verified."""
    from attestation.tdx.quote import parse_quote

    q = parse_quote(quote)
    b = q.body
    return {
        "tee": "tdx",
        "version": q.header.version,
        "att_key_type": q.header.att_key_type,
        "tee_type": q.header.tee_type,
        "body_type": q.body_type,
        "qe_vendor_id": q.header.qe_vendor_id.hex(),
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "mrseam": b.mr_seam.hex(),
        "mrsignerseam": b.mr_signer_seam.hex(),
        "seam_attributes": b.seam_attributes.hex(),
        "td_attributes": b.td_attributes_int,
        "debug": b.debug,
        "xfam": int.from_bytes(b.xfam, "little"),
        "mrtd": b.mr_td.hex(),
        "mrconfigid": b.mr_config_id.hex(),
        "mrowner": b.mr_owner.hex(),
        "mrownerconfig": b.mr_owner_config.hex(),
        "rtmrs": [m.hex() for m in b.rtmrs],
        "report_data": b.report_data.hex(),
        "mrservicetd": None if b.mr_service_td is None else b.mr_service_td.hex(),
        "qe_svn": q.qe_report.isv_svn,
        "qe_mrsigner": q.qe_report.mr_signer.hex(),
        "pck_chain": [_cert_summary(der) for der in q.pck_chain_der],
        "trailing_bytes": q.trailing_bytes,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    data = read_evidence(args.file)
    try:
        ev = to_evidence(data, None)
        out = inspect_snp(ev.report) if ev.tee == "snp" else inspect_tdx(ev.report)
    except EvidenceRejected as exc:
        return _rejected(exc, args.json, None)
    if sniff(data) == "envelope":
        out = {
            "format": "envelope",
            **out,
            "certs": [_cert_summary(der) for der in ev.certs],
            "crls": [hashlib.sha256(c).hexdigest() for c in ev.crls],
            "collateral": {k: len(v) for k, v in sorted(ev.collateral.items())},
        }
    else:
        out = {"format": f"raw {ev.tee}", **out}
    _emit(out, args.json)
    return 0


# --- verify ----------------------------------------------------------------------------------


class ReferenceRejected(Exception):
    """Authentic evidence that the reference values refuse: both verdicts are reported."""

    def __init__(self, out: dict[str, Any], violation: EvidenceRejected) -> None:
        super().__init__(str(violation))
        self.out = out
        self.violation = violation


def _collateral_dir(args: argparse.Namespace) -> Any:
    if args.collateral_dir is None:
        return None
    from attestation.collateral.cache import CollateralDir

    path = Path(args.collateral_dir)
    if not path.is_dir():
        raise UsageError(f"--collateral-dir {path}: not a directory")
    return CollateralDir(path)


def _verify_snp(
    ev: Evidence,
    args: argparse.Namespace,
    anchors: anchors_mod.TrustAnchors,
    refs: ReferenceValues | None,
    now: datetime,
) -> dict[str, Any]:
    from attestation.snp.policy import evaluate
    from attestation.snp.verify import authenticate_snp

    if args.collateral is not None:
        raise UsageError("--collateral applies to TDX quotes only")
    certs: list[bytes] = list(ev.certs)
    if args.vcek is not None:
        certs = load_certificates(read_input(args.vcek, "--vcek", MAX_AUX_FILE), "--vcek")
    if args.cert_chain is not None:
        chain = read_input(args.cert_chain, "--cert-chain", MAX_AUX_FILE)
        certs += load_certificates(chain, "--cert-chain")
    source = _collateral_dir(args)
    if not certs and source is not None:
        certs = list(source.snp_certs(ev.report))
    auth = authenticate_snp(ev.report, certs, anchors, now, crls=ev.crls)
    r = auth.report
    out: dict[str, Any] = {
        "tee": "snp",
        "verified": True,
        "authenticity": "verified",
        "policy_checked": refs is not None,
        "reference_match": "not checked (no --reference-values)",
        "reference_index": None,
        "version": r.version,
        "product": auth.product,
        "signer": auth.signer,
        "report_data": r.report_data.hex(),
        "measurement": r.measurement.hex(),
        "host_data": r.host_data.hex(),
        "chip_id": auth.chip_id.hex(),
        "policy": r.policy.raw,
        "debug": r.policy.debug,
        "vmpl": r.vmpl,
        "platform_info": f"0x{r.platform_info.raw:x}",
        "reported_tcb": _tcb_json(auth.tcbs.reported, r.reported_tcb_raw),
        "at": now.isoformat(),
    }
    if refs is not None:
        try:
            index = evaluate(auth.facts, refs.snp)
        except EvidenceRejected as exc:
            raise ReferenceRejected(out, exc) from None
        out["reference_match"] = f"snp[{index}]"
        out["reference_index"] = index
    return out


def _verify_tdx(
    ev: Evidence,
    args: argparse.Namespace,
    anchors: anchors_mod.TrustAnchors,
    refs: ReferenceValues | None,
    now: datetime,
) -> dict[str, Any]:
    from attestation.tdx.collateral_model import TdxCollateral
    from attestation.tdx.policy import match_references
    from attestation.tdx.verify import authenticate_tdx

    if args.vcek is not None or args.cert_chain is not None:
        raise UsageError(
            "--vcek/--cert-chain apply to SNP only (a TDX quote carries its PCK chain)"
        )
    collateral: TdxCollateral | None = None
    if args.collateral is not None:
        raw = read_input(args.collateral, "--collateral", MAX_AUX_FILE)
        try:
            collateral = TdxCollateral.from_dcap_qvl_json(raw)
        except EvidenceRejected as exc:
            raise UsageError(f"--collateral {args.collateral}: {exc.detail}") from None
    elif ev.collateral:
        collateral = TdxCollateral.from_cbor_map(dict(ev.collateral))
    else:
        source = _collateral_dir(args)
        if source is not None:
            collateral = source.tdx_collateral(ev.report)
    auth = authenticate_tdx(
        ev.report, anchors, now, collateral=collateral, require_collateral=refs is not None
    )
    q = auth.quote
    b = q.body
    pck = auth.pck.extensions
    evaluation = auth.evaluation
    out: dict[str, Any] = {
        "tee": "tdx",
        "verified": True,
        "authenticity": "verified",
        "policy_checked": refs is not None,
        "reference_match": "not checked (no --reference-values)",
        "reference_index": None,
        "version": q.version,
        "report_data": b.report_data.hex(),
        "mrtd": b.mr_td.hex(),
        "mrconfigid": b.mr_config_id.hex(),
        "mrseam": b.mr_seam.hex(),
        "rtmrs": [m.hex() for m in b.rtmrs],
        "td_attributes": int.from_bytes(b.td_attributes, "little"),
        "debug": b.debug,
        "xfam": int.from_bytes(b.xfam, "little"),
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "tcb_status": auth.tcb_status,
        "advisory_ids": list(auth.advisory_ids),
        "tcb_date": None if evaluation is None else evaluation.tcb_level.tcb_date.isoformat(),
        "relaunch_advised": None if evaluation is None else evaluation.relaunch_advised,
        "fmspc": pck.fmspc.hex(),
        "qe_svn": q.qe_report.isv_svn,
        "pce_svn": pck.tcb.pce_svn,
        "at": now.isoformat(),
    }
    if refs is None:
        # The TCB verdict without references: a Revoked TCB vouches for nothing.
        if auth.tcb_status is not None and auth.tcb_status not in AUTHENTICITY_TCB_STATUSES:
            from attestation.errors import TcbStatusRejected

            raise TcbStatusRejected(f"TCB status {auth.tcb_status}: Intel revoked this TCB")
        return out
    try:
        index = match_references(auth.claims, refs.tdx, now)
    except EvidenceRejected as exc:
        raise ReferenceRejected(out, exc) from None
    out["reference_match"] = f"tdx[{index}]"
    out["reference_index"] = index
    return out


def _rejected(
    exc: EvidenceRejected,
    as_json: bool,
    tee: str | None,
    verdict: dict[str, Any] | None = None,
) -> int:
    """One line (or one JSON object); ``verdict`` is set when only the reference match failed."""
    if as_json:
        obj: dict[str, Any] = {
            "tee": tee,
            "verified": False,
            "reason": exc.reason,
            "detail": exc.detail,
        }
        if verdict is not None:
            obj.update(
                authenticity="verified",
                reference_match="rejected",
                verdict={
                    k: v
                    for k, v in verdict.items()
                    if k not in obj and k not in ("authenticity", "reference_match")
                },
            )
        print(json.dumps(obj, indent=2))
    else:
        suffix = "" if verdict is None else " [authentic; refused by the reference values]"
        print(f"rejected: {exc.reason}: {exc.detail}{suffix}")
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    now: datetime = args.at if args.at is not None else datetime.now(UTC)
    anchors = load_anchors(args.trust_anchors)
    refs = load_reference_values(args.reference_values) if args.reference_values else None
    tee: str | None = args.tee
    try:
        ev = to_evidence(read_evidence(args.file), args.tee)
        tee = ev.tee
        if ev.tee == "snp":
            out = _verify_snp(ev, args, anchors, refs, now)
        else:
            out = _verify_tdx(ev, args, anchors, refs, now)
    except ReferenceRejected as exc:
        return _rejected(exc.violation, args.json, tee, exc.out)
    except EvidenceRejected as exc:
        return _rejected(exc, args.json, tee)
    if not args.json and refs is None:
        out["note"] = "authenticity only: no --reference-values, measurement/policy not judged"
    _emit(out, args.json)
    return 0


# --- mock-tee --------------------------------------------------------------------------------


def cmd_mock_init(args: argparse.Namespace) -> int:
    from attestation.providers import mock

    base = Path(args.dir)
    if (base / mock.MOCK_FILE).exists() and not args.force:
        raise UsageError(f"{base} already holds a mock TEE (use --force to replace its keys)")
    if base.exists() and not base.is_dir():
        raise UsageError(f"{base}: exists and is not a directory")
    try:
        mock.init(base, args.product)
    except OSError as exc:
        raise UsageError(f"{base}: cannot write the mock TEE ({exc.strerror})") from None
    print(f"mock TEE ({args.product}) written to {base}")
    print(f"  trust anchors:    --trust-anchors mock:{base}")
    print(f"  reference values: {base / mock.REFERENCE_FILE}")
    return 0


def _mock_evidence_direct(
    directory: Path, tee: str, host_data: bytes, report_data: bytes
) -> Evidence:
    """Evidence with an arbitrary HOST_DATA / MRCONFIGID from the mock hierarchy itself."""
    from attestation.providers.mock import load_info

    info = load_info(directory)
    try:
        if tee == "snp":
            from attestation.mock.snp import load_mock_amd

            if len(host_data) != 32:
                raise UsageError("--host-data: SNP HOST_DATA is 32 bytes")
            amd = load_mock_amd(directory)
            report = amd.make_report(
                measurement=bytes.fromhex(info["snp_measurement"]),
                host_data=host_data,
                report_data=report_data,
            )
            return Evidence(tee="snp", report=report, certs=amd.certs("vcek"))
        from attestation.mock.tdx import load_mock_intel

        intel = load_mock_intel(directory)
        config_id = host_data + bytes(16) if len(host_data) == 32 else host_data
        quote = intel.make_quote(
            mr_td=bytes.fromhex(info["tdx_mrtd"]), mr_config_id=config_id, report_data=report_data
        )
        collateral = intel.make_collateral(datetime.now(UTC)).to_cbor_map()
        return Evidence(tee="tdx", report=quote, collateral=collateral)
    except (OSError, KeyError, ValueError) as exc:
        raise UsageError(f"mock TEE in {directory}: cannot load it ({exc})") from None


def cmd_mock_evidence(args: argparse.Namespace) -> int:
    from attestation.providers.base import ProviderError
    from attestation.providers.mock import MockProvider

    directory = Path(args.dir)
    report_data: bytes = args.report_data if args.report_data is not None else bytes(64)
    try:
        if args.policy is not None:
            policy = read_input(args.policy, "--policy", MAX_AUX_FILE)
            ev = MockProvider(directory, policy, tee=args.tee).evidence(report_data)
        else:
            host_data: bytes = args.host_data if args.host_data is not None else bytes(32)
            ev = _mock_evidence_direct(directory, args.tee, host_data, report_data)
    except ProviderError as exc:
        raise UsageError(str(exc)) from None
    blob = ev.encode()
    if args.output == "-":
        sys.stdout.buffer.write(blob)
        sys.stdout.buffer.flush()
        return 0
    try:
        Path(args.output).write_bytes(blob)
    except OSError as exc:
        raise UsageError(f"-o {args.output}: cannot write ({exc.strerror})") from None
    print(f"wrote {ev.tee} evidence envelope ({len(blob)} bytes) to {args.output}")
    return 0


# --- wiring ----------------------------------------------------------------------------------


def _guarded(
    fn: Callable[[argparse.Namespace], int], prog: str
) -> Callable[[argparse.Namespace], int]:
    """Map UsageError to exit code 2 with one line on stderr."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except UsageError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2

    run.__doc__ = fn.__doc__
    return run


VERIFY_EPILOG = """\
Without --reference-values this checks AUTHENTICITY ONLY: the signature, the certificate chain
to the vendor root of --trust-anchors, and the bindings (report<->VCEK/VLEK, QE report<->
attestation key), plus the TDX collateral when given. It builds a permissive reference from the
evidence's own measurement: any measurement, DEBUG, VMPL, VLEK and TCB level is accepted (a TDX
TCB status of Revoked still fails; without collateral the TDX TCB status is unknown and not
checked). That is not a policy decision: pass --reference-values to judge the evidence.
With --reference-values, a TDX quote needs collateral (--collateral or inside the envelope).

Flags override the envelope: --vcek replaces its certs, --collateral its collateral.
--collateral-dir fills in only what neither the envelope nor a flag provides.
The authenticity verdict and the reference match are reported separately: evidence refused only
by the reference values says so ("authentic; refused by the reference values").
Exit status: 0 verified, 1 rejected ("rejected: <reason>: <detail>"), 2 usage error.
"""


def register(subparsers: Any) -> None:
    """Add ``evidence`` and ``mock-tee`` to the ``concord`` subcommands."""
    ev = subparsers.add_parser("evidence", help="inspect or verify SEV-SNP / TDX evidence")
    ev_sub = ev.add_subparsers(dest="evidence_command", metavar="COMMAND", required=True)

    ins = ev_sub.add_parser(
        "inspect",
        help="print the fields of a report, quote or envelope (no verification)",
        description="Parse FILE strictly and print its fields. Nothing is verified.",
    )
    ins.add_argument("file", metavar="FILE", help="raw SNP report, raw TDX quote or envelope")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_guarded(cmd_inspect, "concord evidence inspect"))

    ver = ev_sub.add_parser(
        "verify",
        help="verify evidence (authenticity only, unless --reference-values is given)",
        description="Verify FILE (raw SNP report, raw TDX quote or evidence envelope).",
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ver.add_argument("file", metavar="FILE", help="raw SNP report, raw TDX quote or envelope")
    ver.add_argument("--tee", choices=("snp", "tdx"), help="expected TEE type (else detected)")
    ver.add_argument(
        "--vcek", metavar="PATH", help="SNP: VCEK/VLEK, DER or PEM (a PEM bundle: leaf first)"
    )
    ver.add_argument(
        "--cert-chain", metavar="PATH", help="SNP: extra certificates (ASK/ASVK, ARK), PEM bundle"
    )
    ver.add_argument(
        "--collateral", metavar="PATH", help="TDX: collateral JSON (dcap-qvl QuoteCollateralV3)"
    )
    ver.add_argument(
        "--collateral-dir",
        metavar="DIR",
        help="collateral directory (concord collateral fetch): the VCEK of an SNP report "
        "without certificates, TDX collateral a quote does not carry",
    )
    ver.add_argument(
        "--at",
        type=parse_time,
        metavar="ISO-8601",
        help="verification time (default: now; no offset means UTC)",
    )
    ver.add_argument(
        "--reference-values",
        metavar="PATH",
        help='JSON {"snp": [...], "tdx": [...]} or a manifest; enables the policy check',
    )
    ver.add_argument(
        "--trust-anchors",
        default="production",
        metavar="production|mock:DIR",
        help="vendor roots to trust (default: production, the pinned AMD/Intel roots)",
    )
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=_guarded(cmd_verify, "concord evidence verify"))

    mt = subparsers.add_parser("mock-tee", help="software TEE for tests and demos (NOT secure)")
    mt_sub = mt.add_subparsers(dest="mock_tee_command", metavar="COMMAND", required=True)

    init = mt_sub.add_parser(
        "init",
        help="create mock AMD/Intel hierarchies and reference values in DIR",
        description="Create a mock TEE in DIR: mock vendor roots (use them only via "
        "--trust-anchors mock:DIR), signing keys (0600) and reference-values.json.",
    )
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--product", choices=SNP_PRODUCTS, default="Genoa", help="mock SNP product")
    init.add_argument("--force", action="store_true", help="replace an existing mock TEE in DIR")
    init.set_defaults(func=_guarded(cmd_mock_init, "concord mock-tee init"))

    mev = mt_sub.add_parser(
        "evidence",
        help="write a mock evidence envelope",
        description="Write an evidence envelope from the mock TEE in DIR. HOST_DATA (SNP) or "
        "MRCONFIGID[0:32] (TDX) is SHA-256(--policy FILE), or --host-data as given (default: "
        "zeros).",
    )
    mev.add_argument("dir", metavar="DIR")
    mev.add_argument("--tee", choices=("snp", "tdx"), required=True)
    src = mev.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="FILE", help="policy bytes; their SHA-256 is bound")
    src.add_argument(
        "--host-data",
        type=_hex_arg((32, 48), "--host-data"),
        metavar="HEX",
        help="32 bytes (TDX: also 48, the whole MRCONFIGID)",
    )
    mev.add_argument(
        "--report-data",
        type=_hex_arg(64, "--report-data"),
        metavar="HEX",
        help="64 bytes of report data (default: zeros)",
    )
    mev.add_argument("-o", "--output", required=True, metavar="FILE", help="output ('-': stdout)")
    mev.set_defaults(func=_guarded(cmd_mock_evidence, "concord mock-tee evidence"))


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m attestation.cli``) until ``concord`` wires it in."""
    parser = argparse.ArgumentParser(prog="concord")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
