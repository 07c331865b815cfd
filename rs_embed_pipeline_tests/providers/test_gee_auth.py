"""GEEProvider authentication, project / endpoint resolution and secret hygiene (stand-in)."""

from __future__ import annotations

import json
import logging

import pytest

from rs_embed_pipeline.orchestration.definitions import build_definitions, imagery_for, resources_for
from rs_embed_pipeline.orchestration.resources import EarthEngineImagery
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.providers import ProviderError
from rs_embed_pipeline.providers.gee import HIGH_VOLUME_URL, STANDARD_URL, GEEProvider, redact

from . import ee_standin as S

pytestmark = pytest.mark.usefixtures("gee_env")

Q1 = ("2024-01-01", "2024-04-01")


@pytest.fixture
def key_file(tmp_path, standin):
    path = tmp_path / "sa-key.json"
    info = S.make_service_account_key(str(path), token_uri=f"{standin.url}/token", project_id="sa-project")
    standin.require_token = standin.access_token  # API calls without the token get 401
    return path, info


def _secrets(info: dict) -> list[str]:
    pem_body = [line for line in info["private_key"].splitlines() if line and "-----" not in line]
    return [S.ACCESS_TOKEN, info["private_key_id"], *pem_body[:3], pem_body[-1]]


def test_service_account_key_file_end_to_end_without_leaking_secrets(standin, key_file, caplog):
    path, info = key_file
    rows = S.tile_rows(2, col_step=2)
    leak_tile = rows[1]
    # The server echoes the caller's credentials in an error for one tile (a worst case).
    standin.fault_hook = S.fail_when(
        lambda r: r.kind == "pixels" and S.grid_contains(r, leak_tile["x0"] + 1, leak_tile["y0"] - 1),
        status=403,
        message=("Permission denied. Authorization: Bearer " + S.ACCESS_TOKEN
                 + ' key={"private_key": "' + info["private_key"].replace("\n", "\\n") + '"}'
                 + "&access_token=" + S.ACCESS_TOKEN),
    )
    caplog.set_level(logging.DEBUG)
    provider = GEEProvider(api_url=standin.url, credentials_file=str(path), backoff_base_s=0.001,
                           backoff_max_s=0.01)
    patches = {p.tile_id: p for p in provider.fetch_patches(rows, *Q1, "s2", bands=["B2"])}

    assert patches[rows[0]["tile_id"]].status == "ok"
    failed = patches[leak_tile["tile_id"]]
    assert failed.status == "failed" and "Permission denied" in failed.meta["reason"]
    assert "[REDACTED" in failed.meta["reason"]

    # the service-account flow ran against the stand-in's token endpoint
    assert standin.of_kind("token")
    api = standin.value_requests + standin.pixel_requests
    assert api and all(r.headers.get("authorization") == f"Bearer {S.ACCESS_TOKEN}" for r in api)
    assert all(r.headers.get("x-goog-user-project") == "sa-project" for r in api)
    assert all(r.path.startswith("/v1/projects/sa-project/") for r in api)

    cfg = provider.stats()["config"]
    assert cfg["auth"] == "service_account_key_file" and cfg["project"] == "sa-project"
    exposed = "\n".join([
        json.dumps(provider.describe()), json.dumps(provider.stats()),
        json.dumps([p.meta for p in patches.values()], default=str), caplog.text,
    ])
    for secret in _secrets(info):
        assert secret not in exposed
    assert "PRIVATE KEY-----" not in exposed.replace("[REDACTED PRIVATE KEY]", "")


def test_application_default_credentials(standin, key_file, monkeypatch):
    path, _ = key_file
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    provider = GEEProvider(api_url=standin.url, backoff_base_s=0.001)
    [p] = provider.fetch_patches(S.tile_rows(1), *Q1, "s2", bands=["B2"])
    assert p.status == "ok"
    assert provider.stats()["config"]["auth"] == "application_default"
    assert provider.project == "sa-project"  # ADC's project when neither project= nor EE_PROJECT


def test_project_precedence(standin, key_file, monkeypatch):
    """An explicit project wins, then EE_PROJECT, then the credentials' project (the test above).
    EE_PROJECT is read by orchestration/settings.py and reaches the provider as the imagery resource's
    project; the provider itself reads no environment variable."""
    path, _ = key_file
    monkeypatch.setenv("EE_PROJECT", "env-project")
    monkeypatch.setenv("RS_EMBED_PROVIDER", "gee")
    monkeypatch.setenv("RS_EMBED_STORE", "/tmp/unused-store")
    settings = Settings.from_env()
    assert settings.ee_project == "env-project"
    assert imagery_for(settings).build().project == "env-project"
    assert GEEProvider(credentials="anonymous").project is None  # the provider does not read EE_PROJECT
    assert GEEProvider(project="explicit", credentials="anonymous").project == "explicit"
    resources = resources_for(settings)
    explicit = EarthEngineImagery(project="explicit", anonymous=True)
    defs = build_definitions(settings, {**resources, "imagery": explicit})
    assert defs.resources["imagery"].build().project == "explicit"
    # A resource without a project of its own, from the user's definitions: EE_PROJECT.
    own = EarthEngineImagery(api_url=standin.url, credentials_file=str(path))
    provider = build_definitions(settings, {**resources, "imagery": own}).resources["imagery"].build()
    list(provider.fetch_patches(S.tile_rows(1), *Q1, "s2", bands=["B2"]))
    assert {r.path.split("/")[3] for r in standin.value_requests} == {"env-project"}


def test_no_project_is_a_clear_error(standin):
    provider = GEEProvider(api_url=standin.url, credentials="anonymous")
    with pytest.raises(ProviderError, match="EE_PROJECT"):
        provider.fetch_patches(S.tile_rows(1), *Q1, "s2")


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_empty_ee_project_leaves_the_project_to_the_credentials(standin, value):
    """EE_PROJECT unset or blank (empty = unset, as the provider read it before settings.py did):
    no project reaches the provider; without credentials that name one, the same clear error."""
    env = {"RS_EMBED_STORE": "/tmp/unused-store", "RS_EMBED_PROVIDER": "gee"}
    if value is not None:
        env["EE_PROJECT"] = value
    settings = Settings.from_env(env)
    assert settings.ee_project is None
    assert Settings.from_env({**env, "EE_PROJECT": " p1 "}).ee_project == "p1"
    # issue 24: the code location no longer loads without a project (test below); the provider keeps its check
    imagery = imagery_for(settings)
    assert isinstance(imagery, EarthEngineImagery) and imagery.project is None
    provider = imagery.model_copy(update={"api_url": standin.url, "anonymous": True}).build()
    with pytest.raises(ProviderError, match="GEE provider: no Earth Engine project: pass project= or set EE_PROJECT"):
        provider.fetch_patches(S.tile_rows(1), *Q1, "s2")


def test_no_project_fails_the_load_naming_ee_project(key_file, tmp_path):
    """Issue 24: RS_EMBED_PROVIDER=gee without EE_PROJECT fails when the code location loads, not in
    the fetch step; a service-account key file's project_id, or anonymous (a stand-in), is enough."""
    settings = Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store", "RS_EMBED_PROVIDER": "gee"})
    with pytest.raises(ValueError) as err:
        build_definitions(settings)
    assert str(err.value) == (
        "Invalid resource field imagery.project: the Earth Engine provider needs a Google Cloud project registered "
        "for Earth Engine: set EE_PROJECT=<project id> (or the imagery resource's project, or a service-account "
        "credentials_file whose project_id is used)")
    resources = resources_for(settings)
    path, _ = key_file
    assert json.loads(path.read_text())["project_id"]
    for imagery in (EarthEngineImagery(credentials_file=str(path)), EarthEngineImagery(anonymous=True)):
        assert build_definitions(settings, {**resources, "imagery": imagery}).resources["imagery"].project is None
    nameless = tmp_path / "no-project.json"
    nameless.write_text(json.dumps({"type": "service_account"}))
    with pytest.raises(ValueError, match="set EE_PROJECT=<project id>"):
        build_definitions(settings, {**resources, "imagery": EarthEngineImagery(credentials_file=str(nameless))})


def test_bad_key_file_errors_do_not_echo_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nSECRETSECRET')
    provider = GEEProvider(project="p", api_url="http://127.0.0.1:9", credentials_file=str(path))
    with pytest.raises(ProviderError) as err:
        provider.fetch_patches(S.tile_rows(1), *Q1, "s2")
    assert "SECRETSECRET" not in str(err.value) and "cannot read" in str(err.value)
    path.write_text(json.dumps({"type": "service_account", "private_key": "not a key SECRETSECRET",
                                "client_email": "a@b.c", "token_uri": "http://127.0.0.1:9/token"}))
    with pytest.raises(ProviderError) as err:
        GEEProvider(project="p", api_url="http://127.0.0.1:9",
                    credentials_file=str(path)).fetch_patches(S.tile_rows(1), *Q1, "s2")
    assert "SECRETSECRET" not in str(err.value)


def test_endpoints():
    assert GEEProvider(project="p", credentials="anonymous").config()["endpoint"] == HIGH_VOLUME_URL
    cfg = GEEProvider(project="p", credentials="anonymous", use_high_volume=False).config()
    assert cfg["endpoint"] == STANDARD_URL and cfg["high_volume"] is False
    cfg = GEEProvider(project="p", credentials="anonymous",
                      api_url="http://user:pw@127.0.0.1:8080/?key=abc").config()
    assert cfg["endpoint"] == "http://127.0.0.1:8080" and "pw" not in json.dumps(cfg)


def test_providers_on_two_endpoints_one_after_the_other(gee_env):
    with S.EEStandIn() as a, S.EEStandIn() as b:
        for s in (a, b, a):
            provider = GEEProvider(project="test-project", api_url=s.url, credentials="anonymous")
            [p] = provider.fetch_patches(S.tile_rows(1), *Q1, "s2", bands=["B2"])
            assert p.status == "ok"
        assert len(a.pixel_requests) == 2 and len(b.pixel_requests) == 1


def test_redact():
    text = ('Authorization: Bearer ya29.a0AfH6SMBxyz-123 and "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE'
            '\\n-----END PRIVATE KEY-----\\n" url https://x/y?key=AIzaSyABC&alt=json '
            'refresh_token=1//0gabc eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln')
    out = redact(text)
    for secret in ("ya29.a0AfH6SMBxyz-123", "MIIE", "AIzaSyABC", "1//0gabc", "eyJpc3MiOiJ4In0"):
        assert secret not in out
    assert "alt=json" in out and "Authorization" in out
    assert redact("token abcdefgh12345 here", ["abcdefgh12345"]) == "token [REDACTED] here"
