"""Client ID Metadata Documents and redirect URIs, judged by the checks the authorization
server applies to every client (control_plane/mcp_oauth/clients.py)."""

from __future__ import annotations

import json

import pytest

from control_plane.mcp_oauth import clients
from control_plane.mcp_oauth.exceptions import InvalidClientMetadata, InvalidRedirectUri

URL = "https://app.example/oauth/client.json"


def document(**values: object) -> bytes:
    return json.dumps({"client_id": URL, "client_name": "App",
                       "redirect_uris": ["https://app.example/cb"], **values}).encode()


def test_a_metadata_document_names_the_client_and_its_redirect_uris():
    info = clients.parse_document(URL, document())
    assert (info.client_id, info.client_name, info.redirect_uris, info.metadata_document) \
        == (URL, "App", ("https://app.example/cb",), True)


@pytest.mark.parametrize(("raw", "sentence"), [
    (b"not json", "is not JSON"),
    (b"[]", "not a JSON object"),
    (document(client_id="https://other.example/c.json"), "names another client_id"),
    (document(token_endpoint_auth_method="client_secret_basic"), "public client"),
    (document(client_secret="s"), "public client"),
    (document(redirect_uris=["http://app.example/cb"]), "must use https"),
    (document(grant_types=["client_credentials"]), "not supported here"),
])
def test_a_bad_metadata_document_is_refused_with_a_sentence(raw, sentence):
    with pytest.raises((InvalidClientMetadata, InvalidRedirectUri)) as refused:
        clients.parse_document(URL, raw)
    assert sentence in refused.value.description


def test_only_https_urls_with_a_path_are_metadata_documents():
    assert clients.is_metadata_url(URL)
    assert not clients.is_metadata_url("https://app.example/")
    assert not clients.is_metadata_url("http://app.example/c.json")
    assert not clients.is_metadata_url("mcpc_abc")


@pytest.mark.parametrize("uri", ["https://app.example/cb", "http://127.0.0.1:8765/cb",
                                 "http://[::1]:9/cb", "http://localhost/cb"])
def test_https_and_loopback_http_redirect_uris_are_accepted(uri):
    assert clients.check_redirect_uri(uri) == uri
