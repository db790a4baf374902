"""TDX TCB evaluation from verified collateral (Intel's TDX TCB evaluation rules).

FMSPC and PCE-ID must match the PCK; the first TCB level whose 16 SGX components and PCESVN are
<= the PCK's and whose TDX components are <= the quote's TEE_TCB_SVN (components 0 and 1 are
skipped when the TDX module major version TEE_TCB_SVN[1] is non-zero: they are then judged
through the matching ``tdxModuleIdentities`` entry) gives the platform status; the TDX module and
the QE identity statuses are converged into it (an OutOfDate component makes
UpToDate/SWHardeningNeeded OutOfDate and the Configuration* statuses
OutOfDateConfigurationNeeded; Revoked wins).

TDX 1.5 relaunch advice: when the result is OutOfDate* and the quote's TEE_TCB_SVN_2 (the module
loaded now, after a TD-preserving update) evaluates to UpToDate/SWHardeningNeeded (or a
Configuration* status), the status becomes TDRelaunchAdvised (TDRelaunchAdvisedConfigurationNeeded):
relaunching the TD would make it current. A reference must accept that status explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from attestation.errors import TcbStatusRejected
from attestation.reference import TDX_TCB_STATUSES
from attestation.tdx.collateral_model import (
    _MODULE_STATUSES,
    _QE_STATUSES,
    CollateralMismatch,
    QeIdentityMismatch,
    TdxModuleMismatch,
)
from attestation.tdx.collateral_parse import (
    IsvTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
)
from attestation.tdx.collateral_verify import VerifiedCollateral
from attestation.tdx.pck import SgxExtensions
from attestation.tdx.quote import QeReport, TdReportBody

_OUT_OF_DATE = ("OutOfDate", "OutOfDateConfigurationNeeded")
# Statuses a TCB level may carry; TDRelaunchAdvised* are results of evaluation, never published.
_LEVEL_STATUSES = tuple(s for s in TDX_TCB_STATUSES if not s.startswith("TDRelaunch"))


@dataclass(frozen=True)
class TcbEvaluation:
    """The converged TCB status and what a grace-period or advisory policy needs to judge it."""

    status: str
    platform_status: str
    module_status: str | None
    qe_status: str
    advisory_ids: tuple[str, ...]
    tcb_level: TcbLevel
    # When the platform (or its TDX module / QE) stopped being current: the tcbDate of the newest
    # level it does not reach. None unless some component is OutOfDate.
    out_of_date_since: datetime | None = None
    # TDX 1.5: the TD runs on an older module than the one now loaded (TEE_TCB_SVN_2); relaunching
    # the TD would make it current. The status then reads TDRelaunchAdvised[ConfigurationNeeded].
    relaunch_advised: bool = False


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    return all((v & m) == (e & m) for v, e, m in zip(value, expected, mask, strict=True))


def _find_module_identity(tcb_info: TcbInfo, version: int) -> TdxModuleIdentity:
    wanted = f"TDX_{version:02X}"
    for identity in tcb_info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    raise TcbStatusRejected(
        f"tcb_info has no TDX module identity {wanted} for TEE_TCB_SVN[1]={version}"
    )


def _first_isv_level(levels: tuple[IsvTcbLevel, ...], svn: int) -> IsvTcbLevel | None:
    for level in levels:
        if svn >= level.isv_svn:
            return level
    return None


def converge(platform: str, components: list[str]) -> str:
    """Intel's convergence: an OutOfDate component downgrades, a Revoked one revokes."""
    status = platform
    if "OutOfDate" in components:
        if platform in ("UpToDate", "SWHardeningNeeded"):
            status = "OutOfDate"
        elif platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            status = "OutOfDateConfigurationNeeded"
    if "Revoked" in components:
        status = "Revoked"
    return status


def check_qe_identity(qe_identity: QeIdentity, qe_report: QeReport) -> IsvTcbLevel:
    """MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES, then the QE's ISVSVN level."""
    if qe_report.mr_signer != qe_identity.mr_signer:
        raise QeIdentityMismatch("qe_report.mr_signer: not the MRSIGNER of Intel's TD QE identity")
    if qe_report.isv_prod_id != qe_identity.isv_prod_id:
        raise QeIdentityMismatch(
            f"qe_report.isv_prod_id: {qe_report.isv_prod_id}, "
            f"QE identity says {qe_identity.isv_prod_id}"
        )
    if not _masked_equal(qe_report.miscselect, qe_identity.miscselect, qe_identity.miscselect_mask):
        raise QeIdentityMismatch(
            "qe_report.miscselect: does not match the QE identity under its mask"
        )
    if not _masked_equal(qe_report.attributes, qe_identity.attributes, qe_identity.attributes_mask):
        raise QeIdentityMismatch(
            "qe_report.attributes: do not match the QE identity under its mask"
        )
    level = _first_isv_level(qe_identity.tcb_levels, qe_report.isv_svn)
    if level is None:
        raise TcbStatusRejected(
            f"QE ISVSVN {qe_report.isv_svn} is below every QE identity TCB level"
        )
    if level.status not in _QE_STATUSES:
        raise TcbStatusRejected(f"qe_identity: unrecognised TCB status {level.status!r}")
    return level


def _platform_level(
    tcb_info: TcbInfo, extensions: SgxExtensions, tee: bytes
) -> tuple[int, TcbLevel] | None:
    """Index and level of the first TCB level the PCK's SGX TCB, PCESVN and ``tee`` reach."""
    start = 2 if tee[1] else 0
    pck = extensions.tcb
    for index, level in enumerate(tcb_info.tcb_levels):
        if any(
            have < need for have, need in zip(pck.components, level.sgx_components, strict=True)
        ):
            continue
        if pck.pce_svn < level.pce_svn:
            continue
        if any(tee[i] < level.tdx_components[i] for i in range(start, 16)):
            continue
        return index, level
    return None


def _module_level(module: TdxModuleIdentity, tee: bytes) -> tuple[int, IsvTcbLevel]:
    for index, level in enumerate(module.tcb_levels):
        if tee[0] >= level.isv_svn:
            if level.status not in _MODULE_STATUSES:
                raise TcbStatusRejected(
                    f"tdx module identity: unrecognised TCB status {level.status!r}"
                )
            return index, level
    raise TcbStatusRejected(f"TDX module SVN {tee[0]} is below every level of identity {module.id}")


def _superseded(
    levels: tuple[TcbLevel, ...] | tuple[IsvTcbLevel, ...], index: int
) -> datetime | None:
    """tcbDate of the level just above ``index``: when that level stopped being the newest."""
    return levels[index - 1].tcb_date if index > 0 else None


def _status_for(
    tcb_info: TcbInfo, extensions: SgxExtensions, tee: bytes, qe_status: str
) -> str | None:
    """Converged status for another TEE_TCB_SVN (TEE_TCB_SVN_2); None when nothing matches."""
    found = _platform_level(tcb_info, extensions, tee)
    if found is None:
        return None
    components = [qe_status]
    if tee[1]:
        try:
            module = _find_module_identity(tcb_info, tee[1])
            components.append(_module_level(module, tee)[1].status)
        except TcbStatusRejected:
            return None
    return converge(found[1].status, components)


def evaluate_tcb(
    collateral: VerifiedCollateral,
    body: TdReportBody,
    qe_report: QeReport,
    extensions: SgxExtensions,
) -> TcbEvaluation:
    """Platform, TDX module and QE statuses from verified collateral, converged to one status."""
    tcb_info = collateral.tcb_info
    if extensions.fmspc != tcb_info.fmspc:
        raise CollateralMismatch(
            f"tcb_info.fmspc {tcb_info.fmspc.hex()} is not the PCK's FMSPC {extensions.fmspc.hex()}"
        )
    if extensions.pce_id != tcb_info.pce_id:
        raise CollateralMismatch(
            f"tcb_info.pceId {tcb_info.pce_id.hex()} is not the PCK's PCE-ID "
            f"{extensions.pce_id.hex()}"
        )
    tee = body.tee_tcb_svn
    module_version = tee[1]
    module = (
        _find_module_identity(tcb_info, module_version) if module_version else tcb_info.tdx_module
    )
    if body.mr_signer_seam != module.mr_signer:
        raise TdxModuleMismatch(
            "body.mr_signer_seam: not the MRSIGNER of Intel's TDX module identity"
        )
    if not _masked_equal(body.seam_attributes, module.attributes, module.attributes_mask):
        raise TdxModuleMismatch(
            "body.seam_attributes: do not match the TDX module identity under its mask"
        )

    found = _platform_level(tcb_info, extensions, tee)
    if found is None:
        raise TcbStatusRejected(
            "no TCB level matches: the platform (PCK SGX TCB, PCESVN, TEE_TCB_SVN) is below every "
            "level Intel publishes for this FMSPC"
        )
    chosen_index, chosen = found
    if chosen.status not in _LEVEL_STATUSES:
        raise TcbStatusRejected(f"tcb_info: unrecognised TCB status {chosen.status!r}")

    components: list[str] = []
    advisories = list(chosen.advisory_ids)
    since: list[datetime] = []
    if chosen.status in _OUT_OF_DATE:
        since += filter(None, [_superseded(tcb_info.tcb_levels, chosen_index)])
    module_status: str | None = None
    if module_version:
        mindex, mlevel = _module_level(module, tee)
        module_status = mlevel.status
        components.append(mlevel.status)
        advisories.extend(mlevel.advisory_ids)
        if mlevel.status == "OutOfDate":
            since += filter(None, [_superseded(module.tcb_levels, mindex)])

    qlevel = check_qe_identity(collateral.qe_identity, qe_report)
    components.append(qlevel.status)
    advisories.extend(qlevel.advisory_ids)
    if qlevel.status in _OUT_OF_DATE:
        qindex = collateral.qe_identity.tcb_levels.index(qlevel)
        since += filter(None, [_superseded(collateral.qe_identity.tcb_levels, qindex)])

    status = converge(chosen.status, components)
    relaunch = False
    if status in _OUT_OF_DATE and body.tee_tcb_svn_2 is not None:
        current = _status_for(tcb_info, extensions, body.tee_tcb_svn_2, qlevel.status)
        if current in ("UpToDate", "SWHardeningNeeded"):
            status, relaunch = "TDRelaunchAdvised", True
        elif current in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            status, relaunch = "TDRelaunchAdvisedConfigurationNeeded", True

    return TcbEvaluation(
        status=status,
        platform_status=chosen.status,
        module_status=module_status,
        qe_status=qlevel.status,
        advisory_ids=tuple(dict.fromkeys(advisories)),
        tcb_level=chosen,
        out_of_date_since=min(since) if since and status in _OUT_OF_DATE else None,
        relaunch_advised=relaunch,
    )
