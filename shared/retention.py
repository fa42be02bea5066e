"""Retention: how many days a tenant's results, inputs and job rows are kept (docs/api.md "Retention").

Three kinds, each with a farm-wide default and per-tenant overrides, in the settings (`shared.config`), the same way
the per-tenant priority ceilings are written:

    RENDERFARM_RETENTION_RESULTS_DAYS=30          stored outputs of terminal jobs (results, overlays, masks)
    RENDERFARM_RETENTION_INPUTS_DAYS=7            uploaded assets (POST /v1/assets)
    RENDERFARM_RETENTION_JOBS_DAYS=90             the job rows themselves (then a 410 tombstone)
    RENDERFARM_TENANT_RETENTION=alice:results=1:inputs=1:jobs=7,bob:jobs=never

Unset means keep forever (the default: upgrading a farm deletes nothing). A tenant entry names only the kinds it
changes; `never` keeps that kind forever for that tenant. Days may be fractional. The settings are where tenants
already get their tokens and priority ceilings, so one file (or environment) describes a tenant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

RetentionKind = Literal["results", "inputs", "jobs"]
RETENTION_KINDS: Final[tuple[RetentionKind, ...]] = ("results", "inputs", "jobs")
NEVER: Final = "never"
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RetentionSyntaxError(ValueError):
    """A malformed RENDERFARM_TENANT_RETENTION entry (the settings turn it into a ConfigError naming the variable)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep each kind: `defaults[kind]` (None: forever) unless `tenants[tenant][kind]` says otherwise."""

    defaults: Mapping[RetentionKind, float | None]
    tenants: Mapping[str, Mapping[RetentionKind, float | None]] = field(default_factory=dict)

    def days(self, kind: RetentionKind, tenant: str) -> float | None:
        own = self.tenants.get(tenant, {})
        return own[kind] if kind in own else self.defaults.get(kind)

    def cutoffs(self, kind: RetentionKind, now: datetime) -> list[tuple[tuple[str, ...], bool, datetime]]:
        """What to purge of `kind`: `(tenants, others, cutoff)` groups. `others=False`: exactly `tenants`; `True`:
        every tenant except `tenants` (those with an override), at the default. Older than `cutoff` goes."""
        groups: list[tuple[tuple[str, ...], bool, datetime]] = []
        overridden = tuple(sorted(tenant for tenant, own in self.tenants.items() if kind in own))
        for tenant in overridden:
            days = self.tenants[tenant][kind]
            if days is not None:
                groups.append(((tenant,), False, now - timedelta(days=days)))
        default = self.defaults.get(kind)
        if default is not None:
            groups.append((overridden, True, now - timedelta(days=default)))
        return groups

    @property
    def enabled(self) -> bool:
        """Whether anything is ever purged."""
        return any(days is not None for days in self.defaults.values()) or any(
            days is not None for own in self.tenants.values() for days in own.values()
        )


def _days(text: str) -> float | None:
    if text.strip().lower() == NEVER:
        return None
    days = float(text)
    if not math.isfinite(days) or days < 0:
        raise ValueError(text)
    return days


def parse_tenant_retention(text: str | None) -> dict[str, dict[RetentionKind, float | None]]:
    """`alice:results=1:inputs=1:jobs=7,bob:jobs=never` → per-tenant overrides. Raises RetentionSyntaxError."""
    tenants: dict[str, dict[RetentionKind, float | None]] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        tenant, *settings = entry.strip().split(":")
        own: dict[RetentionKind, float | None] = {}
        for setting in settings:
            kind, sep, value = setting.partition("=")
            try:
                if not sep or kind not in RETENTION_KINDS:
                    raise ValueError(kind)
                own[kind] = _days(value)
            except ValueError:
                raise RetentionSyntaxError(
                    f"each entry must be tenant:KIND=DAYS[:KIND=DAYS...] with KIND results, inputs or jobs and DAYS "
                    f"a number of days >= 0 or {NEVER!r}, not {entry.strip()!r}"
                ) from None
        if not _TENANT_RE.match(tenant) or not own:
            raise RetentionSyntaxError(f"each entry must name a tenant and at least one KIND=DAYS, not {entry!r}")
        tenants[tenant] = own
    return tenants
