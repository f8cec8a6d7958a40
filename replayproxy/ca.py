"""A local certificate authority, so the proxy can terminate TLS for hosts its clients trust.

The CA is made once per user, outside any cassette folder (cassettes get committed; its key must
not). It mints per-host leaf certificates on demand and keeps them on disk, so restarts are fast
and every process sharing the folder (two proxies, pytest-xdist workers) serves the same ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import platform
import re
import shlex
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .atomic import write_atomic
from .errors import ReplayProxyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, minting may race
    fcntl = None  # type: ignore[assignment]

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=7)  # a cached leaf this close to expiry is minted again
BACKDATE = dt.timedelta(hours=1)  # tolerate client clocks a little behind ours
LISTENER_STEM = "+listener"  # '+' never occurs in a host, so no host can collide with it
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def default_ca_dir() -> Path:
    """Per user, never per project: $XDG_CONFIG_HOME/replayproxy/ca, else ~/.config/..."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "replayproxy" / "ca"


DEFAULT_CA_DIR = default_ca_dir()


class _Memo:
    """Per-instance caches, kept out of the frozen dataclass's equality and repr."""

    def __init__(self) -> None:
        self.signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self.leaves: dict[str, tuple[Path, Path]] = {}
        self.contexts: dict[str, ssl.SSLContext] = {}


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA files in `directory`; use `load_or_create` rather than the constructor."""

    directory: Path
    cert_path: Path
    key_path: Path
    _memo: _Memo = field(default_factory=_Memo, init=False, repr=False, compare=False)

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> tuple[CertificateAuthority, bool]:
        """Reuse the CA in `directory` (never overwrite it: clients trust it); make one if absent.

        Returns the CA and whether it was created by this call.
        """
        folder = Path(directory if directory is not None else DEFAULT_CA_DIR).expanduser()
        ca = cls(folder, folder / "ca.pem", folder / "ca-key.pem")
        created = False
        if not (ca.cert_path.exists() and ca.key_path.exists()):
            _make_private_dir(folder)
            with _locked(folder):
                created = ca._create_if_missing()
        _check_private(folder, ca.key_path)
        ca._memo.signer = ca._load()
        return ca, created

    def leaf(self, host: str) -> tuple[Path, Path]:
        """(cert, key) files for `host`, minted on first use and reused from disk afterwards."""
        name, san = _parse_host(host)
        return self._leaf(name.replace(":", "-"), name, [san])

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting `host`'s leaf, for a CONNECT tunnel to that host."""
        name, _ = _parse_host(host)
        return self._context(name, lambda: self.leaf(name))

    def listener_context(self) -> ssl.SSLContext:
        """A TLS server context for the proxy's own listener: localhost, 127.0.0.1 and ::1."""
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        return self._context(LISTENER_STEM, lambda: self._leaf(LISTENER_STEM, "localhost", names))

    def _context(self, key: str, files: Callable[[], tuple[Path, Path]]) -> ssl.SSLContext:
        context = self._memo.contexts.get(key)
        if context is None:
            context = _server_context(*files())
            self._memo.contexts[key] = context
        return context

    def _leaf(
        self, stem: str, common_name: str, names: Sequence[x509.GeneralName]
    ) -> tuple[Path, Path]:
        cached = self._memo.leaves.get(stem)
        if cached is not None:
            return cached
        folder = self.directory / "leaves"
        paths = (folder / f"{stem}.pem", folder / f"{stem}.key")
        if not self._leaf_ok(paths, names):
            _make_private_dir(folder)
            with _locked(self.directory):  # another process may be minting the same host
                if not self._leaf_ok(paths, names):
                    cert, key = _make_leaf(*self._signer(), common_name, names)
                    # key first: a reader seeing a new key with the old cert finds them
                    # mismatched and waits for the lock instead of serving a broken pair
                    write_atomic(paths[1], _key_pem(key), 0o600)
                    write_atomic(paths[0], cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._memo.leaves[stem] = paths
        return paths

    def _leaf_ok(self, paths: tuple[Path, Path], names: Sequence[x509.GeneralName]) -> bool:
        """A cached leaf is reused only if it is ours, matches its key and names, and is fresh."""
        ca_cert, _ = self._signer()
        try:
            cert = x509.load_pem_x509_certificate(paths[0].read_bytes())
            key = serialization.load_pem_private_key(paths[1].read_bytes(), password=None)
            cert.verify_directly_issued_by(ca_cert)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        return (
            _same_key(cert, key)
            and set(sans) == set(names)
            and cert.not_valid_after_utc - RENEW_BEFORE > _now()
        )

    def _signer(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._memo.signer is None:
            self._memo.signer = self._load()
        return self._memo.signer

    def _create_if_missing(self) -> bool:
        have_cert, have_key = self.cert_path.exists(), self.key_path.exists()
        if have_cert and have_key:
            return False  # another process made it while we waited for the lock
        if have_cert or have_key:
            present, missing = (
                (self.cert_path, self.key_path) if have_cert else (self.key_path, self.cert_path)
            )
            raise ReplayProxyError(
                f"{self.directory}: incomplete CA, {present.name} exists but {missing.name} "
                f"is missing; remove {present} to create a new CA (clients must then trust it)"
            )
        cert, key = _make_ca()
        write_atomic(self.key_path, _key_pem(key), 0o600)
        write_atomic(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return True

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Read and sanity-check the CA, so a broken one fails here and not mid-handshake."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ReplayProxyError(f"{self.directory}: cannot read the CA: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
            raise ReplayProxyError(
                f"{self.key_path}: not the EC private key of {self.cert_path}; "
                f"remove {self.directory} to create a new CA (clients must then trust it)"
            )
        if cert.not_valid_after_utc <= _now():
            raise ReplayProxyError(
                f"{self.cert_path}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                f"remove {self.directory} to create a new CA (clients must then trust it)"
            )
        return cert, key


def _check_private(folder: Path, key_path: Path) -> None:
    """Refuse a CA another user could swap (a folder they own or may write to) or whose key
    they may read: clients trust whatever certificate that key signs."""
    if os.name != "posix":  # pragma: no cover - no POSIX modes to check
        return
    try:
        folder_stat, key_stat = folder.stat(), key_path.stat()
    except OSError as exc:
        raise ReplayProxyError(f"{folder}: cannot read the CA folder: {exc.strerror}") from None
    if folder_stat.st_uid != os.getuid():
        raise ReplayProxyError(
            f"{folder}: the CA folder belongs to another user (uid {folder_stat.st_uid}), who "
            f"could replace the CA; use your own folder (--ca-dir) or chown it to yourself"
        )
    if folder_stat.st_mode & 0o022:
        raise ReplayProxyError(
            f"{folder}: the CA folder is writable by other users (mode "
            f"{oct(folder_stat.st_mode & 0o777)}), who could replace the CA; fix it with "
            f"`chmod 700 {shlex.quote(str(folder))}`"
        )
    if key_stat.st_mode & 0o077:
        raise ReplayProxyError(
            f"{key_path}: the CA's private key is open to other users (mode "
            f"{oct(key_stat.st_mode & 0o777)}), who could sign certificates your clients trust; "
            f"fix it with `chmod 600 {shlex.quote(str(key_path))}`"
        )


def check_not_inside(ca_dir: Path, cassette_dir: Path) -> None:
    """Refuse a CA folder in (or equal to) a cassette folder: cassettes get committed."""
    ca = Path(ca_dir).expanduser().resolve()
    cassettes = Path(cassette_dir).expanduser().resolve()
    if ca == cassettes or cassettes in ca.parents:
        raise ReplayProxyError(
            f"{ca_dir}: the CA folder is inside the cassette folder {cassette_dir}, so its "
            f"private key would be committed with the cassettes; use a folder outside it "
            f"(default {DEFAULT_CA_DIR})"
        )


def trust_instructions(ca: CertificateAuthority) -> str:
    """Shell lines pointing the usual TLS clients at the CA certificate."""
    path = shlex.quote(str(ca.cert_path))
    names = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
    lines = [
        "# Trust replayproxy's local CA in this shell (Python, requests and curl then trust "
        "only it; Node adds it):"
    ]
    lines += [f"export {name}={path}" for name in names]
    return "\n".join(lines) + "\n"


def _parse_host(host: str) -> tuple[str, x509.GeneralName]:
    """Canonical host and its SAN entry; the host becomes a file name, so be strict."""
    if not isinstance(host, str):
        raise ReplayProxyError(f"{host!r}: a host must be a string")
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        if getattr(ip, "scope_id", None):
            raise ReplayProxyError(f"{host!r}: a scoped IPv6 address cannot go in a certificate")
        return str(ip), x509.IPAddress(ip)
    name = text[:-1] if text.endswith(".") else text
    name = name.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            name = ""  # rejected below
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ReplayProxyError(
            f"{host!r}: not a valid host name for a TLS certificate "
            "(expected a DNS name like api.example.com or an IP address)"
        )
    return name, x509.DNSName(name)


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = (platform.node() or "localhost")[:40]  # the machine name gethostname() gives
    name = _name(f"replayproxy local CA ({hostname})")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: Sequence[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["http/1.1"])  # the proxy speaks HTTP/1.1 only
    return context


def _name(common_name: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "replayproxy")]
    if len(common_name) <= 64:  # the CN length limit; the SAN is what clients check anyway
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _same_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == public().public_bytes(*spki)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_private_dir(path: Path) -> None:
    """Create `path` readable by the owner only (parents keep their usual permissions)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ReplayProxyError(f"{path}: cannot create the CA folder: {exc.strerror}") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise minting across processes sharing the folder, so no one mixes two key pairs."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
