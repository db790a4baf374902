from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HpkeSuite(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HPKE_SUITE_UNSPECIFIED: _ClassVar[HpkeSuite]
    HPKE_SUITE_X25519: _ClassVar[HpkeSuite]
    HPKE_SUITE_MLKEM768_X25519: _ClassVar[HpkeSuite]
HPKE_SUITE_UNSPECIFIED: HpkeSuite
HPKE_SUITE_X25519: HpkeSuite
HPKE_SUITE_MLKEM768_X25519: HpkeSuite

class AttestRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("evidence", "hpke_public_key", "state_digest", "latest_transition_hash", "root_ca_pem", "mesh_ca_pem", "deployment", "token")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LATEST_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    evidence: bytes
    hpke_public_key: bytes
    state_digest: bytes
    latest_transition_hash: bytes
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    deployment: str
    token: bytes
    def __init__(self, evidence: _Optional[bytes] = ..., hpke_public_key: _Optional[bytes] = ..., state_digest: _Optional[bytes] = ..., latest_transition_hash: _Optional[bytes] = ..., root_ca_pem: _Optional[bytes] = ..., mesh_ca_pem: _Optional[bytes] = ..., deployment: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    def __init__(self, token: _Optional[bytes] = ...) -> None: ...

class SetManifestRequest(_message.Message):
    __slots__ = ("manifest", "policies", "previous_transition_hash", "owner_public_key", "signature")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    OWNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    policies: _containers.RepeatedScalarFieldContainer[bytes]
    previous_transition_hash: bytes
    owner_public_key: bytes
    signature: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., policies: _Optional[_Iterable[bytes]] = ..., previous_transition_hash: _Optional[bytes] = ..., owner_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SetManifestResponse(_message.Message):
    __slots__ = ("root_ca_pem", "mesh_ca_pem", "transition_hash", "seed_share_document", "deployment_id")
    ROOT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARE_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    transition_hash: bytes
    seed_share_document: bytes
    deployment_id: bytes
    def __init__(self, root_ca_pem: _Optional[bytes] = ..., mesh_ca_pem: _Optional[bytes] = ..., transition_hash: _Optional[bytes] = ..., seed_share_document: _Optional[bytes] = ..., deployment_id: _Optional[bytes] = ...) -> None: ...

class GetManifestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetManifestsResponse(_message.Message):
    __slots__ = ("manifests", "policies", "root_ca_pem", "mesh_ca_pem", "latest_transition_hash", "latest_signature", "history_signing_public_key", "deployment_id")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    LATEST_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    LATEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedScalarFieldContainer[bytes]
    policies: _containers.RepeatedScalarFieldContainer[bytes]
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    latest_transition_hash: bytes
    latest_signature: bytes
    history_signing_public_key: bytes
    deployment_id: bytes
    def __init__(self, manifests: _Optional[_Iterable[bytes]] = ..., policies: _Optional[_Iterable[bytes]] = ..., root_ca_pem: _Optional[bytes] = ..., mesh_ca_pem: _Optional[bytes] = ..., latest_transition_hash: _Optional[bytes] = ..., latest_signature: _Optional[bytes] = ..., history_signing_public_key: _Optional[bytes] = ..., deployment_id: _Optional[bytes] = ...) -> None: ...

class UserRecoverRequest(_message.Message):
    __slots__ = ("sealed_secret", "seedshare_owner_public_key", "signature", "nonce", "force", "expected_latest_transition_hash")
    SEALED_SECRET_FIELD_NUMBER: _ClassVar[int]
    SEEDSHARE_OWNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LATEST_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    sealed_secret: bytes
    seedshare_owner_public_key: bytes
    signature: bytes
    nonce: bytes
    force: bool
    expected_latest_transition_hash: bytes
    def __init__(self, sealed_secret: _Optional[bytes] = ..., seedshare_owner_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., force: _Optional[bool] = ..., expected_latest_transition_hash: _Optional[bytes] = ...) -> None: ...

class UserRecoverResponse(_message.Message):
    __slots__ = ("shares_received", "shares_needed", "shares_dropped")
    SHARES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SHARES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    SHARES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    shares_received: int
    shares_needed: int
    shares_dropped: int
    def __init__(self, shares_received: _Optional[int] = ..., shares_needed: _Optional[int] = ..., shares_dropped: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("manifests", "latest_transition_hash", "latest_signature")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    LATEST_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    LATEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedScalarFieldContainer[bytes]
    latest_transition_hash: bytes
    latest_signature: bytes
    def __init__(self, manifests: _Optional[_Iterable[bytes]] = ..., latest_transition_hash: _Optional[bytes] = ..., latest_signature: _Optional[bytes] = ...) -> None: ...

class NewMeshCertRequest(_message.Message):
    __slots__ = ("evidence", "leaf_public_key", "hpke_public_key", "token", "hpke_suites", "pq_hpke_public_key")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    LEAF_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITES_FIELD_NUMBER: _ClassVar[int]
    PQ_HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    evidence: bytes
    leaf_public_key: bytes
    hpke_public_key: bytes
    token: bytes
    hpke_suites: _containers.RepeatedScalarFieldContainer[HpkeSuite]
    pq_hpke_public_key: bytes
    def __init__(self, evidence: _Optional[bytes] = ..., leaf_public_key: _Optional[bytes] = ..., hpke_public_key: _Optional[bytes] = ..., token: _Optional[bytes] = ..., hpke_suites: _Optional[_Iterable[_Union[HpkeSuite, str]]] = ..., pq_hpke_public_key: _Optional[bytes] = ...) -> None: ...

class NewMeshCertResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "mesh_ca_pem", "root_ca_pem", "sealed_workload_secret", "mesh_ca_bundle_pem", "leaf_lifetime_seconds", "hpke_suite")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SEALED_WORKLOAD_SECRET_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    LEAF_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITE_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: bytes
    mesh_ca_pem: bytes
    root_ca_pem: bytes
    sealed_workload_secret: bytes
    mesh_ca_bundle_pem: bytes
    leaf_lifetime_seconds: int
    hpke_suite: HpkeSuite
    def __init__(self, certificate_chain_pem: _Optional[bytes] = ..., mesh_ca_pem: _Optional[bytes] = ..., root_ca_pem: _Optional[bytes] = ..., sealed_workload_secret: _Optional[bytes] = ..., mesh_ca_bundle_pem: _Optional[bytes] = ..., leaf_lifetime_seconds: _Optional[int] = ..., hpke_suite: _Optional[_Union[HpkeSuite, str]] = ...) -> None: ...

class MeshRecoverRequest(_message.Message):
    __slots__ = ("evidence", "hpke_public_key", "token", "hpke_suites", "pq_hpke_public_key")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITES_FIELD_NUMBER: _ClassVar[int]
    PQ_HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    evidence: bytes
    hpke_public_key: bytes
    token: bytes
    hpke_suites: _containers.RepeatedScalarFieldContainer[HpkeSuite]
    pq_hpke_public_key: bytes
    def __init__(self, evidence: _Optional[bytes] = ..., hpke_public_key: _Optional[bytes] = ..., token: _Optional[bytes] = ..., hpke_suites: _Optional[_Iterable[_Union[HpkeSuite, str]]] = ..., pq_hpke_public_key: _Optional[bytes] = ...) -> None: ...

class MeshRecoverResponse(_message.Message):
    __slots__ = ("sealed_secrets", "hpke_suite")
    SEALED_SECRETS_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITE_FIELD_NUMBER: _ClassVar[int]
    sealed_secrets: bytes
    hpke_suite: HpkeSuite
    def __init__(self, sealed_secrets: _Optional[bytes] = ..., hpke_suite: _Optional[_Union[HpkeSuite, str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("heartbeat", "ready", "state_digest", "latest_transition_hash", "root_ca_pem", "mesh_ca_pem", "mesh_ca_bundle_pem", "token", "leaf_lifetime_seconds")
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LATEST_TRANSITION_HASH_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MESH_CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEAF_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    heartbeat: bool
    ready: bool
    state_digest: bytes
    latest_transition_hash: bytes
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    mesh_ca_bundle_pem: bytes
    token: bytes
    leaf_lifetime_seconds: int
    def __init__(self, heartbeat: _Optional[bool] = ..., ready: _Optional[bool] = ..., state_digest: _Optional[bytes] = ..., latest_transition_hash: _Optional[bytes] = ..., root_ca_pem: _Optional[bytes] = ..., mesh_ca_pem: _Optional[bytes] = ..., mesh_ca_bundle_pem: _Optional[bytes] = ..., token: _Optional[bytes] = ..., leaf_lifetime_seconds: _Optional[int] = ...) -> None: ...
