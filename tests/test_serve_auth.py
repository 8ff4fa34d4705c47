"""`cnncli serve` API keys (issue 23, acceptance 1) on a real server process: 401 JSON without the key or with a
wrong one, 200 with it (Bearer or X-API-Key), the health probes and the page open; a network --host without a key,
a contradictory --no-auth and every kind of bad key file are one sentence and exit 2 before any model loads."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from serve_helpers import ServeProcess

KEY = secrets.token_urlsafe(24)
NEAR_KEY = KEY[:-1] + ("y" if KEY[-1] != "y" else "z")  # the same length, one character off


@pytest.fixture(scope="module")
def keyed(cached_tiny, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api.key"
    key_file.write_text(KEY + "\n")
    with ServeProcess("-m", cached_tiny, "--api-key-file", key_file, "--workers", "1") as proc:
        yield proc


def test_every_api_route_needs_the_key_and_the_probes_do_not(keyed, photos):
    image = Path(photos["chelsea"]).read_bytes()
    with keyed.client() as http:
        for method, path in [("GET", "/v1/model"), ("GET", "/v1/stats"), ("POST", "/v1/classify")]:
            bare = http.request(method, path, content=image if method == "POST" else None)
            assert bare.status_code == 401, (path, bare.text)
            assert "needs an API key" in bare.json()["error"] and bare.headers["www-authenticate"] == "Bearer"
            wrong = http.request(method, path, headers={"Authorization": f"Bearer {NEAR_KEY}"})
            assert wrong.status_code == 401 and wrong.json() == {"error": "the API key is not valid."}
            assert http.request(method, path, headers={"X-API-Key": KEY + "x"}).status_code == 401
            assert http.request(method, path, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        good = http.post("/v1/classify", content=image, headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200 and good.json()[0]["top"][0]["label"] in {"brick", "grass", "gravel"}
        card = http.get("/v1/model", headers={"X-API-Key": KEY})
        assert card.status_code == 200 and card.json()["auth"] is True
        assert http.get("/v1/stats", headers={"authorization": f"bearer {KEY}"}).json()["answered"] == 1
        for path in ("/healthz", "/readyz", "/"):
            assert http.get(path).status_code == 200, path
    assert "POST /v1/classify 401 images=0" in keyed.stderr
    assert "API key required" in keyed.stderr


def test_the_key_can_come_from_the_environment(cached_tiny):
    with ServeProcess("-m", cached_tiny, "--workers", "1", env={"CNNCLI_API_KEY": KEY}) as proc:
        with proc.client() as http:
            assert http.get("/v1/model").status_code == 401
            assert http.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200


def _key_file(tmp_path: Path, content: bytes | None, name: str = "key") -> Path:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (KEY.encode() + b"\n" + KEY.encode() + b"\n", "more than one line"),
    (b"short-key\n", "use at least 16"),
    (b"x" * 5000, "at most 4096 bytes"),
    (b"key with spaces in it\n", "printable ASCII without spaces"),
    ("ключ-ключ-ключ-ключ".encode(), "printable ASCII"),
])
def test_bad_key_files_are_one_sentence_and_exit_2(run_cli, tmp_path, content, fragment):
    result = run_cli("serve", "--api-key-file", _key_file(tmp_path, content), "--port", "0")
    assert result.code == 2, result
    assert fragment in result.err and "Traceback" not in result.err, result.err


def test_a_folder_as_key_file_is_refused(run_cli, tmp_path):
    result = run_cli("serve", "--api-key-file", tmp_path, "--port", "0")
    assert result.code == 2 and "not a regular file" in result.err


def test_network_host_without_a_key_is_refused_unless_no_auth(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CNNCLI_API_KEY", raising=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        result = run_cli("serve", "--host", host, "--port", "0")
        assert result.code == 2, (host, result)
        assert "without an API key" in result.err and "--no-auth" in result.err
        assert len([line for line in result.err.strip().splitlines() if line.strip()]) <= 2  # one sentence
    both = run_cli("serve", "--no-auth", "--api-key-file", _key_file(tmp_path, KEY.encode()), "--port", "0")
    assert both.code == 2 and "--no-auth contradicts" in both.err
    monkeypatch.setenv("CNNCLI_API_KEY", "tiny")
    assert "use at least 16" in run_cli("serve", "--port", "0").err


def test_loopback_names_count_as_loopback():
    from cnncli.serve.auth import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "localhost", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "myhost"))


def test_the_openapi_schema_declares_the_key_so_docs_can_send_it(keyed):
    with keyed.client() as http:
        schema = http.get("/openapi.json").json()  # static, open like /docs
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())
    assert schema["paths"]["/v1/classify"]["post"]["security"]
