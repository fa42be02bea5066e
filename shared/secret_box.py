"""Sealing the tenants' webhook signing secrets for storage (docs/api.md "Events and webhooks").

A signing secret must be readable by the farm (it signs every delivery with it), so it cannot be stored as a digest
like the API tokens. With `RENDERFARM_WEBHOOK_SECRETS_KEY` set, it is stored sealed with Fernet (the `cryptography`
package's authenticated encryption: AES-128-CBC and HMAC-SHA256 over a versioned token): a copy of the database alone
(a backup, a replica, a read-only role) then yields no secret that could forge a delivery.

    box = SecretBox.from_setting("key1,key2")   # the first key seals; every key opens (key rotation)
    stored = box.seal("whsec_...")              # "fernet:<token>"
    box.open(stored)                            # "whsec_..."; an unsealed value is returned as it is

Without keys, secrets are stored as they are (`open` still refuses a sealed value, naming the setting). A farm that
starts using a key reads the secrets it stored before; `needs_reseal` tells which stored values to write again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from shared.errors import ConfigError

__all__ = ["SEALED_PREFIX", "SecretBox", "new_key"]

SEALED_PREFIX: Final = "fernet:"
SETTING: Final = "RENDERFARM_WEBHOOK_SECRETS_KEY"


def new_key() -> str:
    """A fresh key for the setting (32 random bytes, url-safe base64, as Fernet takes them)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Seals and opens stored secrets with the operator's keys; without keys, a pass-through for unsealed values."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        """Raises ConfigError (naming the setting) for a key that is not a Fernet key."""
        keys = [key.strip() for key in keys if key.strip()]
        self._fernets: list[Any] = []  # the first seals; each opens (in this order)
        if keys:
            try:
                from cryptography.fernet import Fernet
            except ImportError:  # pragma: no cover - installed with the server extra
                raise ConfigError(f"{SETTING} needs the `cryptography` package", field=SETTING) from None
            try:
                self._fernets = [Fernet(key.encode("ascii")) for key in keys]
            except (ValueError, UnicodeEncodeError):
                raise ConfigError(
                    f"{SETTING}: each key must be 32 bytes in url-safe base64 (44 characters); make one with "
                    "`python -c 'from shared.secret_box import new_key; print(new_key())'`",
                    field=SETTING,
                ) from None

    @classmethod
    def from_setting(cls, value: str | None) -> SecretBox:
        """The box of the setting's value: comma-separated keys, the first sealing (None or empty: no keys)."""
        return cls((value or "").split(","))

    @property
    def sealing(self) -> bool:
        return bool(self._fernets)

    def seal(self, secret: str) -> str:
        """What to store for `secret`: sealed with the first key, or `secret` itself without keys."""
        if not self._fernets:
            return secret
        return SEALED_PREFIX + self._fernets[0].encrypt(secret.encode("utf-8")).decode("ascii")

    def read(self, stored: str) -> tuple[str, bool]:
        """The secret `stored` holds, and whether it should be stored again: unsealed while a key is set, or sealed
        with a key other than the first (a rotation). One decryption per key tried, the first key first. Raises
        ConfigError when it is sealed and no key given opens it."""
        if not stored.startswith(SEALED_PREFIX):
            return stored, self.sealing
        if not self._fernets:
            raise ConfigError(
                f"the webhook secrets are sealed: set {SETTING} to the key they were sealed with", field=SETTING
            )
        from cryptography.fernet import InvalidToken

        token = stored.removeprefix(SEALED_PREFIX).encode("ascii")
        for index, fernet in enumerate(self._fernets):
            try:
                opened: bytes = fernet.decrypt(token)
            except InvalidToken:
                continue
            return opened.decode("utf-8"), index > 0
        raise ConfigError(
            f"a webhook secret was sealed with a key that {SETTING} no longer lists (keep old keys after the "
            "first until every secret was read once)",
            field=SETTING,
        )

    def open(self, stored: str) -> str:
        """The secret `stored` holds (see `read`)."""
        return self.read(stored)[0]

    def needs_reseal(self, stored: str | None) -> bool:
        """Whether `stored` should be written again (see `read`); never without keys."""
        return stored is not None and self.sealing and self.read(stored)[1]
