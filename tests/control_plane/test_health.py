"""/healthz says the process is alive; /readyz that Postgres and Redis answer (503 naming which
does not)."""

from __future__ import annotations

from starlette.testclient import TestClient

from control_plane.web.app import build_app, build_services
from tests.conftest import TEST_SECRET_KEY, make_settings


def test_alive_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}


def test_not_ready_names_what_is_missing(database_url, redis_url, services, refused_port):
    dead_pg = f"postgresql://postgres@127.0.0.1:{refused_port()}/nothing"
    dead_redis = f"redis://127.0.0.1:{refused_port()}/0"
    for db_url, r_url, expected in ((database_url, dead_redis, {"redis": "unreachable",
                                                                 "postgres": "ok"}),
                                    (dead_pg, redis_url, {"postgres": "unreachable",
                                                          "redis": "ok"})):
        svc = build_services(make_settings(), database_url=db_url, redis_url=r_url,
                             secret_key=TEST_SECRET_KEY)
        try:
            with TestClient(build_app(svc), base_url="http://testserver") as client:
                response = client.get("/readyz")
                assert response.status_code == 503
                assert response.json() == {"status": "unavailable", **expected}
                assert client.get("/healthz").status_code == 200
        finally:
            svc.close()


def test_probes_answer_whatever_the_host(client):
    assert client.get("/readyz", headers={"Host": "10.0.1.15:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "10.0.1.15"}).status_code == 200
    assert client.get("/sign-in", headers={"Host": "10.0.1.15"}).status_code == 400
