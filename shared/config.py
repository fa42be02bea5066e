"""One typed settings object for every process of the farm.

Every setting is read from the environment with the prefix `RENDERFARM_` (for example `RENDERFARM_DATABASE_URL`).
Left unset, the farm runs embedded: SQLite and a local folder under `DATA_DIR`, no Redis, the tiny model. Setting
`REDIS_URL` turns on cluster mode, where the rest must be set too and insecure choices are refused at start
(`Settings.check()`), with a message that names the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.job.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_INLINE_IMAGE_BYTES,
    DEFAULT_MAX_N_ITER,
    DEFAULT_MAX_PROMPT_TOKENS,
)
from shared.retention import RetentionKind, RetentionPolicy, RetentionSyntaxError, parse_tenant_retention
from shared.secret_box import SecretBox

ENV_PREFIX = "RENDERFARM_"

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # bytes of one HTTP request body
DEFAULT_MAX_BATCH_ITEMS = 10_000  # child jobs of one POST /v1/batches
DEFAULT_MAX_UPLOAD_PARTS = 16  # parts of one multipart asset upload (it needs one: the file)
DEFAULT_MAX_QUEUED_JOBS_PER_TENANT = 100_000
DEFAULT_MAX_ATTEMPTS = 3  # deliveries of one job before it fails
DEFAULT_LEASE_BASE_S = 60.0  # a render's lease: base + steps × megapixels × factor (reliability.md)
DEFAULT_LEASE_S_PER_STEP_MEGAPIXEL = 2.0
DEFAULT_JOB_DEADLINE_MAX_S = 3600.0  # the longest a render may hold its lease; Celery's visibility timeout is 3×
DEFAULT_WORKER_SOFT_SHUTDOWN_S = 60.0  # on SIGTERM a worker finishes its step loop within this, then exits
DEFAULT_PROGRESS_INTERVAL_S = 0.25  # at most four live progress writes a second per job
DEFAULT_RECONCILE_INTERVAL_S = 5.0  # how often the reconciler looks for lost, undispatched and expired jobs
DEFAULT_RECONCILE_LOST_GRACE_S = 30.0  # a dispatched job's broker marker may be missing this long before re-publishing
# Outages and retries (reliability.md "Outages and retries"; shared/backoff.py).
DEFAULT_RETRY_BACKOFF_BASE_S = 2.0  # a re-queued job waits base × 2^(n-1) (jittered) before its n-th retry...
DEFAULT_RETRY_BACKOFF_MAX_S = 300.0  # ...capped at this
# Webhooks (docs/api.md "Events and webhooks"): a delivery is retried with backoff for this long after its event,
# then marked failed; the previous secret keeps signing for the overlap after a rotation.
DEFAULT_WEBHOOK_RETRY_PERIOD_S = 24 * 3600.0
DEFAULT_WEBHOOK_BACKOFF_BASE_S = 5.0
DEFAULT_WEBHOOK_BACKOFF_MAX_S = 3600.0
DEFAULT_WEBHOOK_TIMEOUT_S = 10.0
DEFAULT_WEBHOOK_POLL_S = 1.0
DEFAULT_WEBHOOK_SECRET_OVERLAP_S = 24 * 3600.0
DEFAULT_OUTAGE_DEADLINE_S = 3600.0  # a job kept back by storage/database outages fails after this long
DEFAULT_UPLOAD_RETRY_S = 300.0  # a finished render retries its upload this long (renewing its lease) before giving up
DEFAULT_COMMIT_RETRY_S = 120.0  # an uploaded render retries its commit through a database blip this long
DEFAULT_DISPATCH_STRANDED_S = 120.0  # a message received by a worker that never claimed it is re-published after this
DEFAULT_ORPHAN_SWEEP_GRACE_S = 900.0  # a finished job's uploads of uncommitted attempts are removed this long after
DEFAULT_DISPATCH_WINDOW_PER_QUEUE = 16  # messages in the broker per queue; the rest wait, fairly ordered, in the table
MIN_TOKEN_LENGTH = 16  # characters; shorter API tokens are refused as guessable
# Worker announcements (docs/architecture.md "Routing"): a worker re-announces what it serves this often, and its
# announcement counts for this many heartbeats, so a worker killed without warning is forgotten after that long.
DEFAULT_WORKER_HEARTBEAT_S = 5.0
DEFAULT_WORKER_HEARTBEAT_MISSES = 3
DEFAULT_METRICS_PORT = 9400  # a worker's Prometheus /metrics and /healthz port; GPU i of one host uses port + i
# Rate limits (scheduler/rate_limits.py, docs/api.md "Rate limits"): counts over a sliding window of this many seconds.
DEFAULT_RATE_LIMIT_WINDOW_S = 10.0
DEFAULT_RATE_LIMIT_TOKEN_REQUESTS = 1000  # requests of one API token per window (100/s sustained)
DEFAULT_RATE_LIMIT_ADDRESS_REQUESTS = 2000  # requests from one source address per window (several tokens behind NAT)
DEFAULT_RATE_LIMIT_ADDRESS_FAILED_AUTH = 20  # failed authentications from one source address per window
# The highest job priority a tenant may ask for unless RENDERFARM_TENANT_MAX_PRIORITY raises its own ceiling: the
# default priority, so no tenant outranks the others unless the operator allows it.
DEFAULT_MAX_PRIORITY = 0

DEFAULT_PURGE_BATCH_SIZE = 100  # items of each kind (result sets, assets, job rows) one reconciler pass purges
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PRIORITY_LIMIT = 1000  # the job spec's priority range is -1000..1000 (shared/job/spec.py MIN/MAX_PRIORITY)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


# The variables of the secrets only the API needs (its tenants' tokens, the metrics token, the key its webhook secrets
# are sealed with): a worker never gets them, and the scheduler drops them from its environment once it holds their
# digests (the key: its cipher) (docs/reliability.md "Secrets").
API_SECRET_VARIABLES = (
    f"{ENV_PREFIX}API_TOKENS",
    f"{ENV_PREFIX}API_TOKENS_FILE",
    f"{ENV_PREFIX}METRICS_TOKEN",
    f"{ENV_PREFIX}WEBHOOK_SECRETS_KEY",
)


def drop_api_secrets_from_environment() -> None:
    """Remove `API_SECRET_VARIABLES` from this process's environment (`os.environ` and the C environment that child
    processes inherit). The kernel's copy of the initial environment (/proc/<pid>/environ) keeps what the process
    was started with: RENDERFARM_API_TOKENS_FILE keeps the tokens out of it."""
    for name in API_SECRET_VARIABLES:
        os.environ.pop(name, None)


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/renderfarm`, or `~/.local/share/renderfarm`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "renderfarm"


@dataclass(frozen=True)
class TenantToken:
    tenant: str
    token: str


class Settings(BaseSettings):
    """The farm's settings. Build one per process (`Settings()`), call `check()`, and pass it down explicitly."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    redis_url: str | None = None
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    model: str = "tiny"
    public_url: str = "http://127.0.0.1:7860"  # how clients reach the API; local download URLs start with it
    signing_key: str | None = None  # HMAC key of local download URLs; unset: a random key kept in DATA_DIR
    models_dir: Path | None = None

    api_tokens: str | None = None
    api_tokens_file: Path | None = None
    dev_mode: bool = False  # no tokens: every request is tenant "local"; only on a loopback address
    # A bearer token that GET /metrics of the scheduler requires (Prometheus `authorization: credentials`). Unset:
    # /metrics answers only loopback clients (404 to others), like development mode.
    metrics_token: str | None = None
    # Tenants whose tokens are operator tokens on the dashboard (comma-separated): they see every tenant's jobs and
    # the workers page (docs/dashboard.md). In development mode the one tenant, `local`, is an operator.
    operator_tenants: str = ""

    # Rate limits; 0 turns one off. Shared through Redis in cluster mode, per process when embedded.
    rate_limit_window_s: float = Field(DEFAULT_RATE_LIMIT_WINDOW_S, gt=0)
    rate_limit_token_requests: int = Field(DEFAULT_RATE_LIMIT_TOKEN_REQUESTS, ge=0)
    rate_limit_address_requests: int = Field(DEFAULT_RATE_LIMIT_ADDRESS_REQUESTS, ge=0)
    rate_limit_address_failed_auth: int = Field(DEFAULT_RATE_LIMIT_ADDRESS_FAILED_AUTH, ge=0)
    # Priority ceilings: the highest `priority` a tenant's jobs may ask for. `tenant:N` pairs, comma-separated;
    # tenants not named get max_priority. Development mode (one tenant) has no ceiling.
    max_priority: int = Field(DEFAULT_MAX_PRIORITY, ge=-_PRIORITY_LIMIT, le=_PRIORITY_LIMIT)
    tenant_max_priority: str | None = None

    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, gt=0)
    max_inline_image_bytes: int = Field(DEFAULT_MAX_INLINE_IMAGE_BYTES, gt=0)
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, gt=0)
    max_n_iter: int = Field(DEFAULT_MAX_N_ITER, gt=0)
    max_prompt_tokens: int = Field(DEFAULT_MAX_PROMPT_TOKENS, gt=0)  # CLIP tokens of prompt, of negative_prompt
    max_batch_items: int = Field(DEFAULT_MAX_BATCH_ITEMS, gt=0)
    max_upload_parts: int = Field(DEFAULT_MAX_UPLOAD_PARTS, gt=0)
    max_queued_jobs_per_tenant: int = Field(DEFAULT_MAX_QUEUED_JOBS_PER_TENANT, gt=0)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1)
    lease_base_s: float = Field(DEFAULT_LEASE_BASE_S, gt=0)
    lease_s_per_step_megapixel: float = Field(DEFAULT_LEASE_S_PER_STEP_MEGAPIXEL, ge=0)
    job_deadline_max_s: float = Field(DEFAULT_JOB_DEADLINE_MAX_S, gt=0)
    worker_soft_shutdown_s: float = Field(DEFAULT_WORKER_SOFT_SHUTDOWN_S, ge=0)
    progress_interval_s: float = Field(DEFAULT_PROGRESS_INTERVAL_S, gt=0)
    reconcile_interval_s: float = Field(DEFAULT_RECONCILE_INTERVAL_S, gt=0)
    reconcile_lost_grace_s: float = Field(DEFAULT_RECONCILE_LOST_GRACE_S, ge=0)
    dispatch_window_per_queue: int = Field(DEFAULT_DISPATCH_WINDOW_PER_QUEUE, ge=1)
    # Outages and retries (docs/reliability.md "Outages and retries" and "Who moves each job on"): an outage of
    # storage, broker or database is a wait, not an attempt; the job fails for it only after `outage_deadline_s`.
    retry_backoff_base_s: float = Field(DEFAULT_RETRY_BACKOFF_BASE_S, ge=0)
    retry_backoff_max_s: float = Field(DEFAULT_RETRY_BACKOFF_MAX_S, ge=0)
    outage_deadline_s: float = Field(DEFAULT_OUTAGE_DEADLINE_S, gt=0)
    upload_retry_s: float = Field(DEFAULT_UPLOAD_RETRY_S, ge=0)
    commit_retry_s: float = Field(DEFAULT_COMMIT_RETRY_S, ge=0)
    dispatch_stranded_s: float = Field(DEFAULT_DISPATCH_STRANDED_S, gt=0)
    orphan_sweep_grace_s: float = Field(DEFAULT_ORPHAN_SWEEP_GRACE_S, ge=0)
    worker_heartbeat_s: float = Field(DEFAULT_WORKER_HEARTBEAT_S, gt=0)
    worker_heartbeat_misses: int = Field(DEFAULT_WORKER_HEARTBEAT_MISSES, ge=1)
    # Webhooks: retries, timeouts, the signing secret's rotation overlap, and whether URLs may name loopback,
    # link-local, private, multicast or unspecified addresses (off: such URLs are refused with a 422 and at delivery).
    webhook_retry_period_s: float = Field(DEFAULT_WEBHOOK_RETRY_PERIOD_S, gt=0)
    webhook_backoff_base_s: float = Field(DEFAULT_WEBHOOK_BACKOFF_BASE_S, ge=0)
    webhook_backoff_max_s: float = Field(DEFAULT_WEBHOOK_BACKOFF_MAX_S, ge=0)
    webhook_timeout_s: float = Field(DEFAULT_WEBHOOK_TIMEOUT_S, gt=0)
    webhook_poll_s: float = Field(DEFAULT_WEBHOOK_POLL_S, gt=0)
    webhook_secret_overlap_s: float = Field(DEFAULT_WEBHOOK_SECRET_OVERLAP_S, ge=0)
    webhook_allow_private_addresses: bool = False
    # Fernet keys (comma-separated; the first seals, all open) the tenants' webhook signing secrets are stored sealed
    # with (shared/secret_box.py). Unset: stored as they are. An API secret: workers never get it.
    webhook_secrets_key: str | None = None
    # The worker's metrics and health HTTP server (worker/metrics.py); 0 turns it off.
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535)
    # Retention (shared/retention.py, docs/api.md "Retention"): days to keep each kind; unset keeps it forever.
    # TENANT_RETENTION overrides them per tenant; the reconciler purges at most PURGE_BATCH_SIZE items of each kind
    # per pass.
    retention_results_days: float | None = Field(None, ge=0)
    retention_inputs_days: float | None = Field(None, ge=0)
    retention_jobs_days: float | None = Field(None, ge=0)
    tenant_retention: str | None = None
    purge_batch_size: int = Field(DEFAULT_PURGE_BATCH_SIZE, gt=0)

    # ----------------------------------------------------------------------------------------------------------
    # Derived values: what the unset settings mean.

    @property
    def worker_announcement_ttl_s(self) -> float:
        """How long one worker announcement counts: `worker_heartbeat_misses` heartbeats."""
        return self.worker_heartbeat_s * self.worker_heartbeat_misses

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: the broker, live status and worker live in this process."""
        return self.redis_url is None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'renderfarm.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "storage").resolve().as_uri()

    @property
    def database_kind(self) -> Literal["sqlite", "postgresql"]:
        scheme = urlparse(self.resolved_database_url).scheme.split("+", 1)[0]
        if scheme == "sqlite":
            return "sqlite"
        if scheme in ("postgresql", "postgres"):
            return "postgresql"
        raise ConfigError(
            f"RENDERFARM_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://..., not {scheme!r}",
            field="RENDERFARM_DATABASE_URL",
        )

    def operators(self) -> frozenset[str]:
        """The tenants of OPERATOR_TENANTS (the dashboard's operators)."""
        return frozenset(name.strip() for name in self.operator_tenants.split(",") if name.strip())

    def tenant_tokens(self) -> list[TenantToken]:
        """The `tenant:token` pairs of API_TOKENS and API_TOKENS_FILE, validated."""
        pairs: list[tuple[str, str]] = []
        if self.api_tokens:
            pairs += [("RENDERFARM_API_TOKENS", item) for item in self.api_tokens.split(",") if item.strip()]
        if self.api_tokens_file is not None:
            try:
                lines = self.api_tokens_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"RENDERFARM_API_TOKENS_FILE cannot be read: {exc}", field="RENDERFARM_API_TOKENS_FILE"
                ) from exc
            pairs += [
                ("RENDERFARM_API_TOKENS_FILE", line)
                for line in lines
                if line.strip() and not line.lstrip().startswith("#")
            ]
        tokens: list[TenantToken] = []
        seen: set[str] = set()
        for variable, item in pairs:
            tenant, sep, token = item.strip().partition(":")
            if not sep or not _TENANT_RE.match(tenant):
                raise ConfigError(
                    f"{variable}: each entry must be tenant:token with a tenant of 1-64 characters A-Z a-z 0-9 . _ -",
                    field=variable,
                )
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"{variable}: the token of tenant {tenant!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                    "use a random one (for example `python -c 'import secrets; print(secrets.token_urlsafe())'`)",
                    field=variable,
                )
            if token in seen:
                raise ConfigError(f"{variable}: a token is given twice", field=variable)
            seen.add(token)
            tokens.append(TenantToken(tenant, token))
        return tokens

    def priority_ceilings(self) -> dict[str, int]:
        """The `tenant:N` pairs of TENANT_MAX_PRIORITY, validated (tenants not named get `max_priority`)."""
        ceilings: dict[str, int] = {}
        variable = "RENDERFARM_TENANT_MAX_PRIORITY"
        for item in (self.tenant_max_priority or "").split(","):
            if not item.strip():
                continue
            tenant, sep, number = item.strip().partition(":")
            try:
                ceiling = int(number)
            except ValueError:
                ceiling = _PRIORITY_LIMIT + 1
            if not sep or not _TENANT_RE.match(tenant) or abs(ceiling) > _PRIORITY_LIMIT:
                raise ConfigError(
                    f"{variable}: each entry must be tenant:N with N from -{_PRIORITY_LIMIT} to {_PRIORITY_LIMIT}, "
                    f"not {item.strip()!r}",
                    field=variable,
                )
            ceilings[tenant] = ceiling
        return ceilings

    def retention_policy(self) -> RetentionPolicy:
        """The retention days of each kind, by default and per tenant (TENANT_RETENTION validated)."""
        try:
            tenants = parse_tenant_retention(self.tenant_retention)
        except RetentionSyntaxError as exc:
            raise ConfigError(f"RENDERFARM_TENANT_RETENTION: {exc}", field="RENDERFARM_TENANT_RETENTION") from None
        defaults: dict[RetentionKind, float | None] = {
            "results": self.retention_results_days,
            "inputs": self.retention_inputs_days,
            "jobs": self.retention_jobs_days,
        }
        return RetentionPolicy(defaults=defaults, tenants=tenants)

    def without_secrets(self) -> Settings:
        """These settings without the API tokens, the metrics token and the webhook secrets' key: what a process
        keeps after start-up once it has their digests (scheduler/auth.py) and its `secret_box()`, and what it
        hands to processes that need none of them (workers)."""
        cleared = {"api_tokens": None, "api_tokens_file": None, "metrics_token": None, "webhook_secrets_key": None}
        return self.model_copy(update=cleared)

    def secret_box(self) -> SecretBox:
        """What seals the stored webhook secrets (RENDERFARM_WEBHOOK_SECRETS_KEY). Raises ConfigError for a bad key."""
        return SecretBox.from_setting(self.webhook_secrets_key)

    # ----------------------------------------------------------------------------------------------------------

    def check(self) -> Settings:
        """Fail fast on a setting that is missing, malformed or insecure. Returns self for chaining."""
        _ = self.database_kind
        storage = urlparse(self.resolved_storage_url)
        if storage.scheme not in ("file", "s3"):
            raise ConfigError(
                "RENDERFARM_STORAGE_URL must be file:///PATH or s3://BUCKET[/PREFIX]", field="RENDERFARM_STORAGE_URL"
            )
        if storage.scheme == "s3" and not storage.netloc:
            raise ConfigError("RENDERFARM_STORAGE_URL s3:// needs a bucket name", field="RENDERFARM_STORAGE_URL")
        if self.redis_url is not None and urlparse(self.redis_url).scheme not in ("redis", "rediss"):
            raise ConfigError("RENDERFARM_REDIS_URL must be redis://HOST:PORT/DB", field="RENDERFARM_REDIS_URL")
        tokens = self.tenant_tokens()
        self.priority_ceilings()
        self.retention_policy()
        self.secret_box()
        if self.metrics_token is not None and len(self.metrics_token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"RENDERFARM_METRICS_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters; use a random one",
                field="RENDERFARM_METRICS_TOKEN",
            )
        if not self.embedded:
            if not tokens and not self.dev_mode:
                raise ConfigError(
                    "cluster mode (RENDERFARM_REDIS_URL is set) needs RENDERFARM_API_TOKENS or "
                    "RENDERFARM_API_TOKENS_FILE, or RENDERFARM_DEV_MODE=1 on a loopback address",
                    field="RENDERFARM_API_TOKENS",
                )
            if self.database_kind == "sqlite":
                raise ConfigError(
                    "cluster mode (RENDERFARM_REDIS_URL is set) needs a shared database: set "
                    "RENDERFARM_DATABASE_URL=postgresql+psycopg://...",
                    field="RENDERFARM_DATABASE_URL",
                )
        return self

    def check_bind(self, host: str) -> None:
        """Refuse to serve without tokens anywhere but on loopback."""
        if not self.tenant_tokens() and host not in _LOOPBACK_HOSTS:
            raise ConfigError(
                f"serving on {host} without RENDERFARM_API_TOKENS would let anyone submit jobs; "
                "set RENDERFARM_API_TOKENS or bind to 127.0.0.1",
                field="RENDERFARM_API_TOKENS",
            )
