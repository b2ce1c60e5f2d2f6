"""A local Azure Key Vault that speaks enough of the keys REST API for azure-keyvault-keys:

    GET  /keys/{name}[/{version}]                  key bundle (public JWK and attributes)
    POST /keys/{name}/{version}/wrapkey            {"alg", "value"} -> {"kid", "value"}
    POST /keys/{name}/{version}/unwrapkey          (an empty version means the latest)

over HTTPS (a throwaway CA and a certificate for 127.0.0.1 and localhost; ``ca_file`` is the CA),
with every request needing ``?api-version=``. Authentication is Key Vault's challenge protocol: a
request without a bearer token gets 401 and ``WWW-Authenticate: Bearer
authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"``;
the SDK asks its credential for ``https://vault.azure.net/.default`` in that tenant and retries.
``credential()`` hands out the one token the vault accepts, and only for that scope and tenant.

The cryptography is real: each key version is an RSA-2048 key from ``cryptography`` and wrapkey /
unwrapkey do RSA-OAEP-256 (SHA-256, MGF1-SHA-256); any other ``alg`` is refused with 400, so a
client that drifted to another algorithm fails here. Errors are Key Vault's
``{"error": {"code", "message", "innerError"}}``: unknown key or version → 404 KeyNotFound;
disabled key (all its versions) → 403 Forbidden/KeyDisabled for get and both operations; access
revoked → 403 Forbidden/ForbiddenByRbac; bad input → 400 BadParameter. (Key Vault refuses get on
a disabled secret the same way; one report, Azure/azure-sdk-for-python#45342, says it still allows
the public-key wrapKey on a disabled key. The provider checks ``enabled`` itself either way.)

``calls`` records every authenticated request as ``(method, path, alg)``; ``challenges`` counts
the 401 challenges sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RESOURCE = "https://vault.azure.net"
SCOPE = f"{RESOURCE}/.default"
KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
OAEP = {
    "RSA-OAEP-256": padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                 label=None),
}

Response = tuple[int, dict[str, str], dict[str, Any]]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def uint_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def error(status: int, code: str, message: str, inner: str | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if inner:
        body["innerError"] = {"code": inner}
    return status, {}, {"error": body}


@dataclass
class KeyVersion:
    version: str
    private_key: rsa.RSAPrivateKey
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Key:
    name: str
    versions: list[KeyVersion] = field(default_factory=list)
    enabled: bool = True

    def add_version(self) -> KeyVersion:
        version = KeyVersion(uuid.uuid4().hex,
                             rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.versions.append(version)
        return version

    def find(self, version: str) -> KeyVersion | None:
        if not version:
            return self.versions[-1]
        return next((v for v in self.versions if v.version == version), None)


class FakeCredential:
    """Implements azure.core's TokenCredential protocol for the SDK: the vault's token, but only
    for the scope and tenant its challenge names (anything else gets a token it refuses)."""

    def __init__(self, token: str, tenant_id: str) -> None:
        self._token = token
        self._tenant_id = tenant_id
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        right = scopes == (SCOPE,) and tenant_id == self._tenant_id
        return AccessToken(self._token if right else "wrong-audience", int(time.time()) + 3600)


def _certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake Key Vault test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.vault.respond(
            self.command, self.path, self.headers.get("Authorization", ""), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_PATCH = _serve
    do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, vault: FakeAzureKeyVault, context: ssl.SSLContext) -> None:
        self.vault = vault
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS per connection, in the connection's own thread, so a slow handshake blocks nobody.
        request.settimeout(_Handler.timeout)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-request are normal here

    def drop_connections(self) -> None:
        with self.connections_lock:
            for conn in self.connections:
                try:
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
                except OSError:
                    pass


class FakeAzureKeyVault:
    def __init__(self, tenant_id: str = "72f988bf-0000-4000-8000-000000000001") -> None:
        self.tenant_id = tenant_id
        self._token = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}
        self._revoked = False
        self.calls: list[tuple[str, str, str | None]] = []
        self.challenges = 0
        self._folder = Path(tempfile.mkdtemp(prefix="fake-keyvault-"))
        # The CA file outlives stop(), so a client of a stopped vault fails to connect rather
        # than to find its CA bundle; close() (or garbage collection) removes it.
        self._remove_files = weakref.finalize(self, shutil.rmtree, self._folder, True)
        ca_file, cert_file, key_file = _certificate(self._folder)
        self.ca_file = str(ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server = _Server(self, context)
        self.vault_url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-azure-keyvault", daemon=True)
        self._thread.start()
        self._stopped = False

    # -- what a vault administrator does ---------------------------------------------------

    def credential(self) -> FakeCredential:
        return FakeCredential(self._token, self.tenant_id)

    def create_key(self, name: str) -> str:
        with self._lock:
            key = self._keys.setdefault(name, Key(name))
            if not key.versions:
                key.add_version()
        return f"{self.vault_url}/keys/{name}"

    def rotate_key(self, name: str) -> str:
        with self._lock:
            version = self._keys[name].add_version()
        return self.kid(name, version.version)

    def disable_key(self, name: str) -> None:
        with self._lock:
            self._keys[name].enabled = False

    def enable_key(self, name: str) -> None:
        with self._lock:
            self._keys[name].enabled = True

    def revoke_access(self) -> None:
        with self._lock:
            self._revoked = True

    def restore_access(self) -> None:
        with self._lock:
            self._revoked = False

    def kid(self, name: str, version: str) -> str:
        return f"{self.vault_url}/keys/{name}/{version}"

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return [v.version for v in self._keys[name].versions]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self._remove_files()

    # -- the REST API ----------------------------------------------------------------------

    def _challenge(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/'
                                    f'{self.tenant_id}", resource="{RESOURCE}"'}

    def respond(self, method: str, target: str, authorization: str, body: bytes) -> Response:
        url = urlsplit(target)
        if not parse_qs(url.query).get("api-version"):
            return error(400, "MissingApiVersionParameter",
                         "The api-version query parameter (?api-version=) is required for all "
                         "requests.")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            with self._lock:
                self.challenges += 1
            status, _, payload = error(401, "Unauthorized",
                                       "AKV10000: Request is missing a Bearer or PoP token.")
            return status, self._challenge(), payload
        if not secrets.compare_digest(token, self._token):
            status, _, payload = error(401, "Unauthorized", "AKV10022: Invalid audience.")
            return status, self._challenge(), payload
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return error(400, "BadParameter", "The request body is not JSON.")
        alg = request.get("alg") if isinstance(request, dict) else None
        with self._lock:
            self.calls.append((method, url.path, alg))
            if self._revoked:
                return error(403, "Forbidden", "Caller is not authorized to perform action on "
                                               "resource.", "ForbiddenByRbac")
            return self._route(method, url.path, request)

    def _route(self, method: str, path: str, request: Any) -> Response:
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "keys":
            return error(404, "NotFound", f"No route for {method} {path}.")
        name, version = parts[2], (parts[3] if len(parts) > 3 else "")
        operation = parts[4] if len(parts) > 4 else None
        if len(parts) > 5 or (method, operation) not in (
                ("GET", None), ("POST", "wrapkey"), ("POST", "unwrapkey")):
            return error(405, "BadParameter", f"No route for {method} {path}.")
        key = self._keys.get(name)
        found = key.find(version) if key else None
        if key is None or found is None:
            shown = f"{name}/{version}" if version else name
            return error(404, "KeyNotFound",
                         f"A key with (name/id) {shown} was not found in this key vault. If you "
                         "recently deleted this key you may be able to recover it using the "
                         "correct recovery command.")
        verb = {None: "get", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}[operation]
        if not key.enabled:
            return error(403, "Forbidden", f"Operation {verb} is not allowed on a disabled key.",
                         "KeyDisabled")
        kid = self.kid(name, found.version)
        if operation is None:
            return 200, {}, self._bundle(kid, key, found)
        alg, value = request.get("alg"), request.get("value")
        if alg not in OAEP or not isinstance(value, str):
            return error(400, "BadParameter", "Invalid algorithm or value.")
        try:
            data = b64url_decode(value)
            if operation == "wrapkey":
                out = found.private_key.public_key().encrypt(data, OAEP[alg])
            else:
                out = found.private_key.decrypt(data, OAEP[alg])
        except ValueError:
            return error(400, "BadParameter", f"The {verb} operation failed.")
        return 200, {}, {"kid": kid, "value": b64url(out)}

    @staticmethod
    def _bundle(kid: str, key: Key, version: KeyVersion) -> dict[str, Any]:
        numbers = version.private_key.public_key().public_numbers()
        return {
            "key": {"kid": kid, "kty": "RSA", "key_ops": KEY_OPS,
                    "n": b64url(uint_bytes(numbers.n)), "e": b64url(uint_bytes(numbers.e))},
            "attributes": {"enabled": key.enabled, "created": version.created,
                           "updated": version.created, "recoveryLevel": "Recoverable+Purgeable",
                           "recoverableDays": 90, "exportable": False},
        }


@contextmanager
def running_fake_azure_keyvault() -> Iterator[FakeAzureKeyVault]:
    vault = FakeAzureKeyVault()
    try:
        yield vault
    finally:
        vault.close()
