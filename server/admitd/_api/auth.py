"""Who is calling: the identity behind an RPC, and the tenants it may act for.

A caller identifies itself with an API key (``authorization: Bearer <key>`` metadata) or,
under mutual TLS, with its certificate's subject common name; ``auth.clients`` maps either to
a tenant, or to an admin that may act for every tenant. Only SHA-256 hashes of keys are
configured, and a presented key is compared with every configured hash in constant time.

Policy, in one place (:meth:`Principal.tenant_for`): a tenant's client acts only as that
tenant (an empty ``tenant`` field means its own); an admin, or an anonymous caller where
``auth.allow_anonymous`` lets one in, acts as the tenant it names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .._config import AuthConfig, ClientConfig
from .._refusals import (
    credentials_required,
    malformed_authorization,
    other_tenant,
    unknown_api_key,
    unknown_certificate,
)

AUTHORIZATION = "authorization"
_BEARER = "bearer "
CERT_NAME_KEY = "x509_common_name"  # grpc auth context: the peer certificate's subject CN


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller."""

    name: str  # the client's configured name; "anonymous" without credentials
    tenant: str | None  # the one tenant it acts for; None = any (admin or anonymous)
    admin: bool = False

    def tenant_for(self, requested: str) -> str:
        """The tenant a call names, checked against who calls (empty: the caller's own)."""
        if self.tenant is None or requested in ("", self.tenant):
            return requested or (self.tenant or "")
        raise other_tenant(self.name, self.tenant, requested)

    def sees_tenant(self, tenant: str) -> bool:
        """Status shows a tenant's own client only that tenant."""
        return self.tenant is None or tenant == self.tenant


ANONYMOUS = Principal("anonymous", None)


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._keys = [
            (bytes.fromhex(c.api_key_sha256), _principal(c))
            for c in config.clients
            if c.api_key_sha256 is not None
        ]
        self._certs = {
            c.cert_common_name: _principal(c) for c in config.clients if c.cert_common_name
        }

    def identify(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        peer: Callable[[], Mapping[str, Iterable[bytes]] | None],
    ) -> Principal:
        """The caller of an RPC, from its metadata and its TLS peer (``auth_context``, asked
        only when its answer matters: it builds a dict on every call).

        Raises:
            Unauthenticated: a wrong or malformed credential, or none where one is needed.
        """
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                return self._by_key(value)
        if self._certs or not self.config.allow_anonymous:  # else anonymous, certificate or not
            names = list((peer() or {}).get(CERT_NAME_KEY, ()))
            if names:
                return self._by_certificate(names[0].decode(errors="replace"))
        if self.config.allow_anonymous:
            return ANONYMOUS
        raise credentials_required()

    def _by_key(self, header: str | bytes) -> Principal:
        text = header.decode(errors="replace") if isinstance(header, bytes) else header
        if not text[: len(_BEARER)].lower() == _BEARER:
            raise malformed_authorization()
        presented = hashlib.sha256(text[len(_BEARER) :].strip().encode()).digest()
        found = None
        for digest, principal in self._keys:  # every entry, so timing says nothing
            if hmac.compare_digest(digest, presented):
                found = principal
        if found is None:
            raise unknown_api_key()
        return found

    def _by_certificate(self, common_name: str) -> Principal:
        principal = self._certs.get(common_name)
        if principal is None:
            if self.config.allow_anonymous:
                return ANONYMOUS  # a valid certificate that names nobody in particular
            raise unknown_certificate(common_name)
        return principal


def hash_key(key: str) -> str:
    """The ``api_key_sha256`` to configure for ``key``."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


def _principal(client: ClientConfig) -> Principal:
    return Principal(client.name, client.tenant, client.admin)
