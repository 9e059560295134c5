"""TLS for the TCP port: certificate options from the config (mutual TLS with client_ca).

Twisted's ``ssl:`` endpoint string cannot require client certificates, so the
options are built with ``PrivateCertificate.options(ca)``, which makes OpenSSL
verify the client against ``client_ca`` and reject clients without one.
"""

from __future__ import annotations

from twisted.internet import ssl

from util.config import ConfigError, TlsConfig, resolve_path


def _read(path: str, key: str) -> bytes:
    try:
        return resolve_path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key) from None


def server_tls_options(tls: TlsConfig) -> ssl.CertificateOptions:
    """The CertificateOptions for the listener; ConfigError if a file is missing or bad."""
    assert tls.cert and tls.key
    cert_pem = _read(tls.cert, "server.tls.cert")
    key_pem = _read(tls.key, "server.tls.key")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as exc:
        raise ConfigError(f"cannot load certificate and key: {exc}", "server.tls") from None
    if not tls.client_ca:
        options: ssl.CertificateOptions = certificate.options()
        return options
    try:
        authority = ssl.Certificate.loadPEM(_read(tls.client_ca, "server.tls.client_ca"))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load client CA: {exc}", "server.tls.client_ca") from None
    mutual: ssl.CertificateOptions = certificate.options(authority)
    return mutual
