"""The ``tls:`` and ``auth:`` sections: who may call, and how a caller proves it (an API key,
or a client certificate over mutual TLS). ``_api/tls.py`` and ``_api/auth.py`` apply them; the
checks between them and the rest of the file (unique names, a common name needing a client CA,
a client's tenant that exists) are in ``checks.py``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import StrictModel
from .fields import KeyHash, ReadableFile


class TLSConfig(StrictModel):
    """TLS on the gRPC port. The files are read again when they change on disk, so a
    rotated certificate (cert-manager) is used for new connections without a restart."""

    cert_file: ReadableFile
    """PEM certificate chain of the server."""
    key_file: ReadableFile
    """PEM private key of the server."""
    client_ca_file: ReadableFile | None = None
    """PEM CA bundle. Set: every client must present a certificate signed by it (mutual
    TLS), and a certificate's subject common name can identify a client (``auth.clients``)."""


class ClientConfig(StrictModel):
    """A caller admitd knows: one credential, and the tenant it acts for (or admin)."""

    name: str = Field(min_length=1, max_length=200)
    """For logs and error messages; never a secret."""
    api_key_sha256: KeyHash | None = None
    """SHA-256 (lowercase hex) of the API key the client sends as ``authorization: Bearer
    <key>``. Only the hash is stored; ``admitd hash-key`` computes it."""
    cert_common_name: str | None = Field(None, min_length=1, max_length=200)
    """Subject common name of the client's certificate (needs ``tls.client_ca_file``)."""
    tenant: str | None = None
    """The one tenant this client may acquire for, and whose leases it may release."""
    admin: bool = False
    """May act for every tenant and read the status of all (e.g. a trusted gateway)."""

    @model_validator(mode="after")
    def _one_credential_one_role(self) -> ClientConfig:
        if (self.api_key_sha256 is None) == (self.cert_common_name is None):
            raise ValueError("set exactly one of api_key_sha256 and cert_common_name")
        if (self.tenant is None) == (not self.admin):
            raise ValueError("set exactly one of tenant and admin: true")
        return self


class AuthConfig(StrictModel):
    """Who may call. Identity comes from an API key or a client certificate."""

    allow_anonymous: bool = True
    """Callers without credentials may act for any tenant (the embedded default). Set false
    in production: every call then needs a credential of ``clients``. A wrong credential
    is refused either way."""
    clients: list[ClientConfig] = Field(default_factory=list)
    """Known callers; names, key hashes and common names are unique."""
