"""Every outbound HTTP client of the running service is built by ``tenant_runtime/outbound.py``
(DESIGN.md, invariant 10), so a new sender cannot forget the egress check or turn redirects
back on. Checked on the syntax tree of every module of the three packages: a call that opens an
HTTP connection or builds a client (urllib, http.client, httpx2, requests, urllib3, raw sockets,
the openai and anthropic SDKs, boto3 and the cloud key SDKs) is allowed only in outbound.py,
an SDK client only when its ``http_client=`` is ``outbound.http_client(...)`` (or
``outbound.async_http_client(...)``), and the few other places are listed below with the
reason they are not a tenant's to aim.

``ops/`` (benchmarks and smoke scripts run by an operator against their own machine) and
``tests/`` are not part of the running service and are not scanned."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("control_plane", "tenant_runtime", "workers")

# calls that send HTTP or open a connection, by the dotted name they are called with
SENDERS = {
    "urllib.request.urlopen", "urlopen", "urllib.request.build_opener", "build_opener",
    "http.client.HTTPConnection", "http.client.HTTPSConnection", "HTTPConnection",
    "HTTPSConnection", "socket.create_connection", "socket.socket", "create_connection",
    "urllib3.PoolManager", "urllib3.ProxyManager", "urllib3.request", "PoolManager",
    "urllib3.HTTPConnectionPool", "urllib3.HTTPSConnectionPool", "urllib3.connection_from_url",
    "httpx2.Client", "httpx2.AsyncClient", "httpx2.HTTPTransport", "httpx2.AsyncHTTPTransport",
    "httpx2.request", "httpx2.stream", "httpx2.get", "httpx2.post", "httpx2.put",
    "httpx2.patch", "httpx2.delete", "httpx2.head", "httpx2.options",
    "httpcore2.ConnectionPool", "httpcore2.AsyncConnectionPool", "httpcore2.HTTPProxy",
    "httpcore2.SOCKSProxy",
    "requests.get", "requests.post", "requests.put", "requests.patch", "requests.delete",
    "requests.head", "requests.request", "requests.Session", "requests.session",
    "boto3.client", "boto3.resource", "KeyClient", "CryptographyClient", "SecretClient",
    "kms_v1.KeyManagementServiceClient", "KeyManagementServiceClient",
    "aiohttp.ClientSession", "OTLPSpanExporter",
}
# SDK clients that take an ``http_client``: allowed anywhere with http_client=outbound.http_client()
# (or outbound.async_http_client())
SDK_CLIENTS = {"openai.OpenAI", "openai.AzureOpenAI", "openai.AsyncOpenAI",
               "openai.AsyncAzureOpenAI", "anthropic.Anthropic", "anthropic.AsyncAnthropic",
               "anthropic.AnthropicBedrock", "anthropic.AnthropicVertex", "OpenAI", "AzureOpenAI",
               "Anthropic", "AsyncOpenAI", "AsyncAnthropic"}

ALLOWED = {
    # the choke point itself
    ("tenant_runtime/outbound.py", "httpx2.Client"): "the checked client",
    ("tenant_runtime/outbound.py", "httpcore2.ConnectionPool"): "the checked pool",
    ("tenant_runtime/outbound.py", "httpx2.AsyncClient"): "the checked async client",
    ("tenant_runtime/outbound.py", "httpcore2.AsyncConnectionPool"):
        "the checked async pool",
    ("tenant_runtime/outbound.py", "urllib3.util.connection.create_connection"):
        "the checked botocore connection",
    ("tenant_runtime/outbound.py", "session.client"): "the checked boto3 client",
    ("tenant_runtime/outbound.py", "loop.create_connection"):
        "the providers' lean transport, to a checked address",
    # not a tenant's to aim
    ("control_plane/embedded.py", "socket.socket"):
        "`magistrate up` probes its embedded servers' ports on this machine",
    ("control_plane/web/serving.py", "socket.socket"): "the web server's listening socket",
    ("control_plane/cli/stack.py", "urllib.request.urlopen"):
        "`magistrate up` polls its own web process on this machine",
    ("control_plane/keys/aws.py", "session.client"):
        "the platform's KMS (aws-kms), an operator setting, not a tenant's",
    ("control_plane/keys/azure.py", "KeyClient"): "the customer key's vault, set by the operator",
    ("control_plane/backups/destinations.py", "boto3.client"):
        "the backup store (MAGISTRATE_BACKUP_DESTINATION, MAGISTRATE_BACKUP_S3_ENDPOINT), an "
        "operator setting, not a tenant's",
    ("control_plane/keys/azure.py", "CryptographyClient"):
        "the customer key's vault, set by the operator",
    ("control_plane/keys/gcp.py", "kms_v1.KeyManagementServiceClient"):
        "the platform's Cloud KMS, an operator setting",
    ("tenant_runtime/observability/tracing.py", "OTLPSpanExporter"):
        "the operator's trace collector (MAGISTRATE_OTLP_ENDPOINT), not a tenant's; spans carry "
        "names, counts and times only",
}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    if isinstance(node, ast.Call):
        return dotted(node.func) + "()"
    return ""


def is_boto_client(call: ast.Call, name: str) -> bool:
    """``<something>.client("service", ...)``: boto3's (and a session's) client factory."""
    return (name.endswith(".client") and bool(call.args)
            and isinstance(call.args[0], ast.Constant | ast.Name)
            and not name.startswith("outbound."))


def is_checked_client(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and dotted(node.func) in ("outbound.http_client",
                                                                "outbound.async_http_client")


def uses_outbound_client(call: ast.Call, checked_dicts: set[str]) -> bool:
    """``http_client=outbound.http_client(...)``, given or spread from a dict that holds it."""
    for keyword in call.keywords:
        if keyword.arg == "http_client":
            return is_checked_client(keyword.value)
        if keyword.arg is None and isinstance(keyword.value, ast.Name) \
                and keyword.value.id in checked_dicts:
            return True
    return False


def outbound_calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, called name, why it is flagged) for each call that builds or opens a connection
    without the choke point."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    checked_dicts = set()  # names assigned {"http_client": outbound.http_client(...), ...}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict) \
                and any(isinstance(k, ast.Constant) and k.value == "http_client"
                        and is_checked_client(v)
                        for k, v in zip(node.value.keys, node.value.values, strict=True)):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            checked_dicts |= {t.id for t in targets if isinstance(t, ast.Name)}
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if (name in SENDERS or name.endswith((".urlopen", ".create_connection"))
                or is_boto_client(node, name)):
            found.append((node.lineno, name, "opens a connection"))
        elif name in SDK_CLIENTS and not uses_outbound_client(node, checked_dicts):
            found.append((node.lineno, name, "an SDK client without outbound.http_client()"))
    return found


def test_every_outbound_client_is_built_by_the_egress_choke_point():
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 100
    offending, used = [], set()
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for line, name, why in outbound_calls(path):
            if (relative, name) in ALLOWED:
                used.add((relative, name))
            else:
                offending.append(f"{relative}:{line} {name}: {why}")
    assert not offending, ("Build outbound clients with tenant_runtime.outbound "
                           "(http_client, async_http_client, aws_client):\n"
                           + "\n".join(offending))
    assert used == set(ALLOWED), f"stale allowances: {set(ALLOWED) - used}"


def test_the_scan_sees_every_kind_of_sender(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import urllib.request, httpx2, openai, anthropic, boto3, requests\n"
        "from tenant_runtime import outbound\n"
        "def f(session, policy):\n"
        "    urllib.request.urlopen('http://x')\n"
        "    httpx2.Client()\n"
        "    httpx2.post('http://x')\n"
        "    requests.get('http://x')\n"
        "    boto3.client('s3')\n"
        "    session.client('bedrock-runtime', endpoint_url='http://x')\n"
        "    openai.OpenAI(api_key='k')\n"
        "    anthropic.Anthropic(api_key='k', http_client=httpx2.Client())\n"
        "    openai.OpenAI(api_key='k', http_client=outbound.http_client(policy))\n"
        "    common = {'http_client': outbound.http_client(policy)}\n"
        "    openai.AzureOpenAI(api_key='k', **common)\n"
        "    other = {'timeout': 5}\n"
        "    openai.AzureOpenAI(api_key='k', **other)\n")
    names = [(line, name) for line, name, _ in outbound_calls(probe)]
    assert sorted(names) == [
        (4, "urllib.request.urlopen"), (5, "httpx2.Client"), (6, "httpx2.post"),
        (7, "requests.get"), (8, "boto3.client"), (9, "session.client"),
        (10, "openai.OpenAI"), (11, "anthropic.Anthropic"), (11, "httpx2.Client"),
        (16, "openai.AzureOpenAI")]
