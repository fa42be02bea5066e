"""shared.secret_box: the tenants' webhook secrets sealed at rest with the operator's Fernet keys."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from shared.config import Settings
from shared.errors import ConfigError
from shared.secret_box import SEALED_PREFIX, SecretBox, new_key

SECRET = "whsec_" + "A" * 43 + "="


def test_a_sealed_secret_opens_with_its_key_and_hides_the_secret() -> None:
    key = new_key()
    box = SecretBox.from_setting(key)
    stored = box.seal(SECRET)
    assert stored.startswith(SEALED_PREFIX)
    assert SECRET not in stored
    assert box.seal(SECRET) != stored  # a fresh IV each time
    assert box.open(stored) == SECRET
    # What was sealed is a real Fernet token of the key (readable by any Fernet implementation).
    assert Fernet(key.encode()).decrypt(stored.removeprefix(SEALED_PREFIX).encode()).decode() == SECRET
    assert len(stored) <= 512  # tenant_webhooks.secret (migration 0009)


def test_without_keys_secrets_pass_through_and_sealed_ones_are_refused_naming_the_setting() -> None:
    plain = SecretBox()
    assert plain.seal(SECRET) == SECRET
    assert plain.open(SECRET) == SECRET
    assert not plain.needs_reseal(SECRET)
    sealed = SecretBox.from_setting(new_key()).seal(SECRET)
    with pytest.raises(ConfigError) as refused:
        plain.open(sealed)
    assert refused.value.field == "RENDERFARM_WEBHOOK_SECRETS_KEY"


def test_key_rotation_opens_with_any_key_and_reseals_with_the_first() -> None:
    old, new = new_key(), new_key()
    sealed_old = SecretBox.from_setting(old).seal(SECRET)
    rotating = SecretBox.from_setting(f"{new},{old}")
    assert rotating.open(sealed_old) == SECRET
    assert rotating.needs_reseal(sealed_old)
    assert rotating.needs_reseal(SECRET)  # stored before any key: sealed on its next read
    resealed = rotating.seal(SECRET)
    assert not rotating.needs_reseal(resealed)
    assert SecretBox.from_setting(new).open(resealed) == SECRET
    with pytest.raises(ConfigError):
        SecretBox.from_setting(new).open(sealed_old)  # the old key dropped too early


@pytest.mark.parametrize("key", ["too-short", "A" * 44, new_key() + ",nope"])
def test_a_malformed_key_is_a_config_error_naming_the_setting(key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings(_env_file=None, webhook_secrets_key=key).check()
    assert refused.value.field == "RENDERFARM_WEBHOOK_SECRETS_KEY"


def test_the_key_is_an_api_secret_no_worker_gets() -> None:
    settings = Settings(_env_file=None, webhook_secrets_key=new_key())
    assert settings.secret_box().sealing
    assert settings.without_secrets().webhook_secrets_key is None
