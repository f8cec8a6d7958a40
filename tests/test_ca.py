"""The local CA, checked with real TLS handshakes on loopback, not just by reading certificates."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from replayproxy.ca import (
    CertificateAuthority,
    check_not_inside,
    default_ca_dir,
    trust_instructions,
)
from replayproxy.errors import ReplayProxyError


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")[0]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _serve(context: ssl.SSLContext, client: Callable[[int], Any], host: str = "127.0.0.1") -> Any:
    """Run a TLS server on an ephemeral port, call client(port) in a thread, stop the server."""

    async def main() -> Any:
        server = await asyncio.start_server(_answer, host, 0, ssl=context)
        try:
            return await asyncio.to_thread(client, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 2)

    return asyncio.run(main())


def _get(url: str, context: ssl.SSLContext) -> str:
    # no ProxyHandler entries: an HTTPS_PROXY in the environment must not reroute the request
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(url, timeout=2) as response:
        return response.read().decode()


def _verify_error(url: str, context: ssl.SSLContext) -> ssl.SSLCertVerificationError:
    with pytest.raises(urllib.error.URLError) as caught:
        _get(url, context)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError), caught.value
    return caught.value.reason


def _trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(cert_path: Path) -> list[x509.GeneralName]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_default_ca_dir_is_in_the_user_config_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_ca_dir() == tmp_path / "xdg" / "replayproxy" / "ca"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_ca_dir() == tmp_path / "home" / ".config" / "replayproxy" / "ca"


def test_created_once_then_reused_with_private_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "config" / "ca"
    ca, created = CertificateAuthority.load_or_create(folder)
    assert created
    assert (ca.directory, ca.cert_path, ca.key_path) == (
        folder,
        folder / "ca.pem",
        folder / "ca-key.pem",
    )
    assert _mode(ca.key_path) == 0o600
    assert _mode(folder) == 0o700
    cert, key = ca.cert_path.read_bytes(), ca.key_path.read_bytes()

    again, created = CertificateAuthority.load_or_create(folder)
    assert not created
    assert again == ca
    assert (again.cert_path.read_bytes(), again.key_path.read_bytes()) == (cert, key)
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_ca_certificate_can_only_sign_leaves(ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert "replayproxy local CA (" in cert.subject.rfc4514_string()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3640 <= lifetime.days <= 3660


def test_incomplete_ca_is_reported_and_left_alone(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.load_or_create(tmp_path / "ca")
    key = ca.key_path.read_bytes()
    ca.cert_path.unlink()
    with pytest.raises(ReplayProxyError, match="ca.pem is missing"):
        CertificateAuthority.load_or_create(tmp_path / "ca")
    assert ca.key_path.read_bytes() == key and not ca.cert_path.exists()


@pytest.mark.parametrize(
    "what, mode, fix",
    [("folder", 0o777, "chmod 700"), ("folder", 0o720, "chmod 700"), ("key", 0o644, "chmod 600"),
     ("key", 0o640, "chmod 600")],
)
def test_a_ca_others_could_swap_or_read_is_refused_with_the_fix(
    ca: CertificateAuthority, what: str, mode: int, fix: str
) -> None:
    target = ca.directory if what == "folder" else ca.key_path
    key = ca.key_path.read_bytes()
    os.chmod(target, mode)
    try:
        with pytest.raises(ReplayProxyError) as caught:
            CertificateAuthority.load_or_create(ca.directory)
        message = str(caught.value)
        assert message.startswith(f"{target}: ") and "\n" not in message
        assert f"{fix} {target}" in message and oct(mode) in message
        assert _mode(target) == mode and ca.key_path.read_bytes() == key  # left as it was
    finally:
        os.chmod(target, 0o700 if what == "folder" else 0o600)
    CertificateAuthority.load_or_create(ca.directory)  # fixed as told: used again


def test_the_ca_command_refuses_a_world_writable_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    folder = tmp_path / "ca"
    CertificateAuthority.load_or_create(folder)
    os.chmod(folder, 0o777)
    done = subprocess.run([sys.executable, str(root / "cli.py"), "ca", "--dir", str(folder)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"chmod 700 {folder}" in line and done.stdout == ""


def test_client_trusting_only_the_ca_reaches_localhost(ca: CertificateAuthority) -> None:
    body = _serve(
        ca.server_context("localhost"),
        lambda port: _get(f"https://localhost:{port}/", _trusting(ca)),
    )
    assert body == "hello"


def test_default_trust_store_rejects_the_local_ca(ca: CertificateAuthority) -> None:
    error = _serve(
        ca.server_context("localhost"),
        lambda port: _verify_error(f"https://localhost:{port}/", ssl.create_default_context()),
    )
    assert "certificate verify failed" in str(error)


def test_leaf_for_another_host_fails_hostname_check(ca: CertificateAuthority) -> None:
    error = _serve(
        ca.server_context("api.example.com"),
        lambda port: _verify_error(f"https://localhost:{port}/", _trusting(ca)),
    )
    assert "hostname mismatch" in error.verify_message.lower()


def test_listener_certificate_covers_localhost_and_loopback(ca: CertificateAuthority) -> None:
    def client(port: int) -> list[str]:
        urls = [f"https://127.0.0.1:{port}/", f"https://localhost:{port}/"]
        return [_get(url, _trusting(ca)) for url in urls]

    assert _serve(ca.listener_context(), client) == ["hello", "hello"]
    cert_path = next((ca.directory / "leaves").glob("*listener*.pem"))
    assert set(_sans(cert_path)) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    }


def test_listener_certificate_over_ipv6(ca: CertificateAuthority) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    body = _serve(
        ca.listener_context(), lambda port: _get(f"https://[::1]:{port}/", _trusting(ca)), "::1"
    )
    assert body == "hello"


def test_leaf_is_minted_once_and_reused(ca: CertificateAuthority) -> None:
    cert_path, key_path = ca.leaf("api.example.com")
    assert cert_path.parent == ca.directory / "leaves"
    assert _mode(key_path) == 0o600
    inodes = cert_path.stat().st_ino, key_path.stat().st_ino
    assert ca.leaf("api.example.com") == (cert_path, key_path)
    assert ca.server_context("api.example.com") is ca.server_context("API.example.com.")

    # a fresh process (a new instance on the same folder) reuses the files on disk
    reloaded, _ = CertificateAuthority.load_or_create(ca.directory)
    assert reloaded.leaf("api.example.com") == (cert_path, key_path)
    assert (cert_path.stat().st_ino, key_path.stat().st_ino) == inodes


@pytest.mark.parametrize(
    ("host", "san"),
    [
        ("api.example.com", x509.DNSName("api.example.com")),
        ("API.Example.COM.", x509.DNSName("api.example.com")),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("[::1]", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("bücher.example", x509.DNSName("xn--bcher-kva.example")),
    ],
)
def test_leaf_names_its_host_and_is_a_server_certificate(
    ca: CertificateAuthority, host: str, san: x509.GeneralName
) -> None:
    cert_path, key_path = ca.leaf(host)
    assert _sans(cert_path) == [san]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_path.read_bytes()))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 360 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 370


def test_leaf_signed_by_another_ca_is_minted_again(tmp_path: Path) -> None:
    first, _ = CertificateAuthority.load_or_create(tmp_path / "first")
    second, _ = CertificateAuthority.load_or_create(tmp_path / "second")
    foreign_cert, foreign_key = first.leaf("api.example.com")
    (second.directory / "leaves").mkdir()
    shutil.copy(foreign_cert, second.directory / "leaves" / foreign_cert.name)
    shutil.copy(foreign_key, second.directory / "leaves" / foreign_key.name)

    cert_path, _ = second.leaf("api.example.com")
    assert cert_path.read_bytes() != foreign_cert.read_bytes()
    x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(second.cert_path.read_bytes())
    )


def test_concurrent_minting_yields_one_matching_pair(ca: CertificateAuthority) -> None:
    # separate instances stand in for separate processes: no shared in-memory cache
    instances = [CertificateAuthority.load_or_create(ca.directory)[0] for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda each: each.leaf("race.example.com"), instances))
    assert len(set(results)) == 1
    cert_path, key_path = results[0]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "../etc",
        "a/b",
        "a\\b",
        "a b",
        "a\x00b",
        "foo..com",
        "-leading.example",
        "trailing-.example",
        "a:b",
        "+listener",
        "x" * 64 + ".example",
        ".".join(["abcdefgh"] * 30),
    ],
)
def test_bad_host_names_are_refused(ca: CertificateAuthority, host: str) -> None:
    with pytest.raises(ReplayProxyError, match="not a valid host name"):
        ca.leaf(host)
    with pytest.raises(ReplayProxyError):
        ca.server_context(host)
    leaves = ca.directory / "leaves"
    assert not leaves.exists() or list(leaves.iterdir()) == []


def test_ca_folder_inside_a_cassette_folder_is_refused(tmp_path: Path) -> None:
    cassettes = tmp_path / "cassettes"
    with pytest.raises(ReplayProxyError, match="inside the cassette folder"):
        check_not_inside(cassettes / "ca", cassettes)
    with pytest.raises(ReplayProxyError):
        check_not_inside(cassettes, cassettes)
    with pytest.raises(ReplayProxyError):
        check_not_inside(cassettes / ".." / "cassettes" / "deep" / "ca", cassettes)
    check_not_inside(tmp_path / "ca", cassettes)
    check_not_inside(tmp_path / "cassettes-ca", cassettes)


def test_trust_instructions_export_the_ca_path(ca: CertificateAuthority) -> None:
    text = trust_instructions(ca)
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
        assert f"export {name}={ca.cert_path}" in text
    assert text.splitlines()[0].startswith("#")
