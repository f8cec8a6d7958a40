"""TLS client contexts for the proxy's own connections to the upstream.

`replayproxy run --forward` (and `ca`'s trust instructions) point SSL_CERT_FILE and friends at the
local CA, which *replaces* an OpenSSL client's trust store. The proxy itself must keep trusting the
real world while such a shell records, so its upstream context never reads those variables: it
loads OpenSSL's compiled-in default locations (or certifi's bundle), or only `--upstream-ca`.
"""

from __future__ import annotations

import os
import ssl
import sys

from .errors import ConfigError


def upstream_context(cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying client context: `cafile` alone when given, else the system's roots.

    Unlike `ssl.create_default_context()`, the environment (SSL_CERT_FILE, SSL_CERT_DIR) is
    ignored, so a shell that trusts only the local CA can still record from a public upstream.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile:
        try:
            context.load_verify_locations(cafile=os.fspath(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--upstream-ca {cafile}: cannot load: {exc}") from None
        return context
    if sys.platform == "win32":  # pragma: no cover - the system store, not OpenSSL's files
        context.load_default_certs()
        return context
    paths = ssl.get_default_verify_paths()
    loaded = False
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        context.load_verify_locations(cafile=paths.openssl_cafile)
        loaded = True
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath):
        context.load_verify_locations(capath=paths.openssl_capath)
        loaded = loaded or any(os.scandir(paths.openssl_capath))
    if not loaded:
        try:
            import certifi
        except ImportError:  # pragma: no cover - nothing else to trust: every upstream fails
            return context
        context.load_verify_locations(cafile=certifi.where())
    return context


def system_roots_pem() -> bytes:
    """The system's root certificates as PEM (for a bundle that adds the local CA to them)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            with open(candidate, "rb") as file:
                return file.read()
    try:
        import certifi
    except ImportError:  # pragma: no cover
        return b""
    with open(certifi.where(), "rb") as file:
        return file.read()
