from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError

GOOD_TOKEN = "k" * 24


def make(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, _env_file=None, **values)  # type: ignore[arg-type]


def test_embedded_defaults(tmp_path: Path) -> None:
    settings = make(tmp_path).check()
    assert settings.embedded
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'renderfarm.db'}"
    assert settings.resolved_storage_url.startswith("file:///")
    assert settings.database_kind == "sqlite"
    assert settings.model == "tiny"


def test_environment_overrides_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RENDERFARM_MODEL", "/models/sd15")
    monkeypatch.setenv("RENDERFARM_MAX_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.model == "/models/sd15"
    assert settings.max_batch_size == 4


def test_tokens_from_setting_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# tenants\nbeta:{'b' * 20}\n\n")
    settings = make(tmp_path, api_tokens=f"alpha:{GOOD_TOKEN}", api_tokens_file=token_file)
    assert [(t.tenant, t.token) for t in settings.tenant_tokens()] == [("alpha", GOOD_TOKEN), ("beta", "b" * 20)]


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"api_tokens": "alpha:short"}, "RENDERFARM_API_TOKENS"),
        ({"api_tokens": f"no-separator{GOOD_TOKEN}"}, "RENDERFARM_API_TOKENS"),
        ({"api_tokens": f"bad tenant:{GOOD_TOKEN}"}, "RENDERFARM_API_TOKENS"),
        ({"api_tokens": f"a:{GOOD_TOKEN},b:{GOOD_TOKEN}"}, "RENDERFARM_API_TOKENS"),
        ({"database_url": "mysql://x/y"}, "RENDERFARM_DATABASE_URL"),
        ({"storage_url": "ftp://x/y"}, "RENDERFARM_STORAGE_URL"),
        ({"storage_url": "s3:///nobucket"}, "RENDERFARM_STORAGE_URL"),
        ({"redis_url": "http://127.0.0.1:6379"}, "RENDERFARM_REDIS_URL"),
        # Cluster mode without tokens, or with a database no second machine can share.
        (
            {"redis_url": "redis://127.0.0.1:6379/0", "database_url": "postgresql+psycopg://h/db"},
            "RENDERFARM_API_TOKENS",
        ),
        ({"redis_url": "redis://127.0.0.1:6379/0", "api_tokens": f"a:{GOOD_TOKEN}"}, "RENDERFARM_DATABASE_URL"),
        ({"api_tokens_file": "/nonexistent/tokens"}, "RENDERFARM_API_TOKENS_FILE"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path: Path, values: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make(tmp_path, **values).check()
    assert raised.value.field == variable
    assert variable in raised.value.message


def test_cluster_mode_with_everything_set(tmp_path: Path) -> None:
    settings = make(
        tmp_path,
        redis_url="redis://127.0.0.1:6379/0",
        database_url="postgresql+psycopg://postgres@127.0.0.1/db",
        storage_url="s3://renders/farm",
        api_tokens=f"alpha:{GOOD_TOKEN}",
    ).check()
    assert not settings.embedded
    assert settings.database_kind == "postgresql"


def test_no_tokens_only_on_loopback(tmp_path: Path) -> None:
    settings = make(tmp_path).check()
    settings.check_bind("127.0.0.1")
    with pytest.raises(ConfigError, match="RENDERFARM_API_TOKENS"):
        settings.check_bind("0.0.0.0")  # noqa: S104 - the insecure bind is what is being refused
    make(tmp_path, api_tokens=f"a:{GOOD_TOKEN}").check_bind("0.0.0.0")  # noqa: S104


def test_retention_defaults_keep_everything_and_tenants_override() -> None:
    from datetime import UTC, datetime, timedelta

    assert not Settings(_env_file=None).retention_policy().enabled  # an upgraded farm deletes nothing
    settings = Settings(
        _env_file=None,
        retention_results_days=30,
        retention_jobs_days=90,
        tenant_retention="alice:results=1.5:jobs=never, bob:inputs=0",
    )
    policy = settings.retention_policy()
    assert policy.days("results", "alice") == 1.5
    assert policy.days("results", "carol") == 30
    assert policy.days("jobs", "alice") is None  # never
    assert policy.days("jobs", "bob") == 90
    assert policy.days("inputs", "bob") == 0
    assert policy.days("inputs", "alice") is None  # no default: forever
    now = datetime(2026, 12, 7, tzinfo=UTC)
    assert policy.cutoffs("results", now) == [
        (("alice",), False, now - timedelta(days=1.5)),
        (("alice",), True, now - timedelta(days=30)),  # every tenant but alice, at the default
    ]
    assert policy.cutoffs("jobs", now) == [(("alice",), True, now - timedelta(days=90))]
    assert policy.cutoffs("inputs", now) == [(("bob",), False, now)]


@pytest.mark.parametrize(
    "value",
    ["alice", "alice:results", "alice:results=-1", "alice:pictures=3", "alice:results=soon", "bad tenant:jobs=1"],
)
def test_a_malformed_tenant_retention_is_named(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(_env_file=None, tenant_retention=value).check()
    assert caught.value.field == "RENDERFARM_TENANT_RETENTION"
