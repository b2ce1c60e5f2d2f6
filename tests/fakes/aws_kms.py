"""An AWS KMS endpoint for tests: moto's server, in a thread of this process, on 127.0.0.1.

The adapter under test talks to it through the real boto3 SDK (real HTTP, real SigV4 signing,
real botocore error parsing), with dummy credentials that live on a ``boto3.Session`` object only,
never in ``os.environ``.

moto (5.2) records ``disable_key`` but still encrypts and decrypts with a disabled key. Real KMS
answers ``DisabledException`` (and ``KMSInvalidStateException`` for a key pending deletion), so
``KeyStateGuard`` sits in front of moto's WSGI app and gives those answers, in KMS's JSON error
format, for ``Encrypt`` and ``Decrypt``. Everything else is moto's own behaviour.

    with running_fake_aws_kms() as kms:
        provider = AwsKmsProvider(endpoint_url=kms.endpoint_url, session=kms.session)
        key_id = kms.create_key()
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.kms.models import kms_backends
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REFUSED_STATES = {
    "Disabled": ("DisabledException", "{arn} is disabled."),
    "PendingDeletion": ("KMSInvalidStateException", "{arn} is pending deletion."),
}
_CREDENTIAL_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/kms/")


class KeyStateGuard:
    """WSGI middleware: refuse Encrypt/Decrypt with a key that is not enabled, as KMS does."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) \
            -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target not in ("TrentService.Encrypt", "TrentService.Decrypt"):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        refusal = self._refusal(environ, body)
        if refusal is None:
            return self.app(environ, start_response)
        code, message = refusal
        payload = json.dumps({"__type": code, "message": message}).encode()
        start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.1"),
                                           ("Content-Length", str(len(payload)))])
        return [payload]

    @staticmethod
    def _refusal(environ: dict[str, Any], body: bytes) -> tuple[str, str] | None:
        # Decrypt: the key named in the request (our adapter always names it); without one,
        # moto's own answer stands.
        key_ref = json.loads(body or b"{}").get("KeyId")
        if not key_ref:
            return None
        match = _CREDENTIAL_REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
        backend = kms_backends[DEFAULT_ACCOUNT_ID][match.group(1) if match else REGION]
        try:
            key = backend.keys[backend.any_id_to_key_id(key_ref)]
        except Exception:  # unknown key or alias: let moto answer NotFoundException
            return None
        if key.key_state not in _REFUSED_STATES:
            return None
        code, message = _REFUSED_STATES[key.key_state]
        return code, message.format(arn=key.arn)


class FakeAwsKms:
    """A started moto server with KMS, and the boto3 session and calls a test needs."""

    def __init__(self) -> None:
        # Port 0: the OS picks a free port at bind time. (Picking one first and binding later
        # races with other processes, and moto's server thread exits on a bind error, which
        # leaves ``start()`` waiting for ever.)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        # Only our guard sees requests before moto: werkzeug reads ``server.app`` per request,
        # and no request has been made yet.
        wsgi_server = self._server._server
        assert wsgi_server is not None
        wsgi_server.app = KeyStateGuard(wsgi_server.app)
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.session = boto3.session.Session(aws_access_key_id=ACCESS_KEY,
                                             aws_secret_access_key=SECRET_KEY,
                                             region_name=REGION)
        self._client: Any = self.session.client("kms", endpoint_url=self.endpoint_url)
        self._stopped = False

    @property
    def client(self) -> Any:
        """A plain boto3 KMS client on the fake, for what an operator would do by hand."""
        return self._client

    def create_key(self, description: str = "magistrate test key") -> str:
        metadata = self._client.create_key(Description=description)["KeyMetadata"]
        return str(metadata["KeyId"])

    def create_alias(self, alias_name: str, key_id: str) -> None:
        self._client.create_alias(AliasName=alias_name, TargetKeyId=key_id)

    def disable_key(self, key_id: str) -> None:
        self._client.disable_key(KeyId=key_id)

    def enable_key(self, key_id: str) -> None:
        self._client.enable_key(KeyId=key_id)

    def key_arn(self, key_id: str) -> str:
        return str(self._client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])

    def stop(self) -> None:
        """Stop serving, join the server thread and close its socket. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._client.close()
        self._server.stop()  # shutdown() + join the thread
        wsgi_server = self._server._server
        if wsgi_server is not None:
            wsgi_server.server_close()


@contextmanager
def running_fake_aws_kms() -> Iterator[FakeAwsKms]:
    kms = FakeAwsKms()
    try:
        yield kms
    finally:
        kms.stop()

