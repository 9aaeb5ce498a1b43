"""TLS for the gRPC port, with certificates re-read when their files change.

grpc asks :meth:`CertificateFiles.fetch` before every new connection's handshake; it looks at
the files' metadata (cheap) and reloads only when they changed, so a certificate rotated on
disk (cert-manager, or a Kubernetes Secret's symlink swap) serves new connections without a
restart. Connections already open keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import cast

import grpc

from .._config import TLSConfig

log = logging.getLogger("admitd")

_Signature = tuple[tuple[int, int, int], ...]


class CertificateFiles:
    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self._paths = [config.cert_file, config.key_file]
        if config.client_ca_file is not None:
            self._paths.append(config.client_ca_file)
        self._signature = self._stat()
        self.initial = self._load()

    def credentials(self) -> grpc.ServerCredentials:
        # grpc documents None from the fetcher as "no change"; its type stubs omit it.
        fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            fetch,
            require_client_authentication=self.config.client_ca_file is not None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when a file changed since the last load; None keeps the
        current one (also when a file is unreadable mid-rotation: the next handshake
        tries again)."""
        try:
            signature = self._stat()
            if signature == self._signature:
                return None
            configuration = self._load()
        except (OSError, ValueError) as error:
            log.warning("TLS files unreadable, keeping the current certificate: %s", error)
            return None
        self._signature = signature
        log.info("TLS certificate reloaded", extra={"cert_file": self.config.cert_file})
        return configuration

    def _stat(self) -> _Signature:
        # Follows symlinks: a swapped Kubernetes Secret volume shows a new inode.
        stats = [os.stat(path) for path in self._paths]
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = _read(self.config.cert_file), _read(self.config.key_file)
        ca = _read(self.config.client_ca_file) if self.config.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.strip():
        raise ValueError(f"{path} is empty")
    return data
