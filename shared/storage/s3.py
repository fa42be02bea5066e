"""The S3 backend: any S3-compatible store (AWS, MinIO, R2, moto) through boto3, imported only when used."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError, NotFound, PermanentError, StorageUnavailable
from shared.storage.interface import (
    STORAGE_SETTING,
    Storage,
    StoredObject,
    check_expires_s,
    checked_sha256,
    sha256_hex,
)
from shared.storage.keys import validate_key, validate_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger("shared.storage.s3")

S3_MAX_ATTEMPTS = 5  # boto3 "standard" retry mode: attempts, including the first
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0
S3_LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)

_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "NoSuchBucket",
        "PermanentRedirect",
        "InvalidBucketName",
    }
)


@dataclass(frozen=True)
class _Clients:
    pid: int
    api: S3Client  # talks to the store (endpoint_url)
    public: S3Client  # only signs URLs (public_endpoint_url); never sends a request


class S3Storage(Storage):
    """Objects in an S3-compatible bucket under `prefix`, through boto3.

    Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
    instance role). The sha256 is stored as the object's `x-amz-meta-sha256`. Clients are made lazily, one pair
    per process (keyed by pid), so a Celery prefork child never reuses the parent's sockets.

    `max_attempts`, `connect_timeout_s` and `read_timeout_s` tune boto3's retries and timeouts (the defaults are
    reliability.md's); `list_page_size` is the ListObjectsV2 page size in keys.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        *,
        max_attempts: int = S3_MAX_ATTEMPTS,
        connect_timeout_s: float = S3_CONNECT_TIMEOUT_S,
        read_timeout_s: float = S3_READ_TIMEOUT_S,
        list_page_size: int = S3_LIST_PAGE_SIZE,
    ) -> None:
        if not bucket:
            raise ConfigError(f"{STORAGE_SETTING} s3:// needs a bucket name", field=STORAGE_SETTING)
        if not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size must be 1..1000 keys, not {list_page_size}")
        self.bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        self.public_endpoint_url = public_endpoint_url or self.endpoint_url
        self.region = region
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.list_page_size = list_page_size
        self._clients_state: _Clients | None = None
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url!r})"

    # -- clients -----------------------------------------------------------------------------------------------

    def _make_client(self, endpoint_url: str | None) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # boto3 1.36+ adds CRC checksums that several S3-compatible stores reject (aws-cli 9214); we keep our
            # own sha256 and send Content-MD5, which every store checks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
        # A Session per client: boto3's default session is not thread-safe to create clients from.
        session = boto3.session.Session()
        try:
            return session.client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as exc:  # botocore's word for a malformed endpoint URL
            raise ConfigError(
                f"RENDERFARM_S3_ENDPOINT_URL / RENDERFARM_S3_PUBLIC_ENDPOINT_URL {endpoint_url!r}: {exc}",
                field="RENDERFARM_S3_ENDPOINT_URL",
            ) from exc

    def _clients(self) -> _Clients:
        pid = os.getpid()
        state = self._clients_state
        if state is not None and state.pid == pid:
            return state
        if self._lock_pid != pid:
            # Forked: the parent's lock may have been held at fork time; start over with a fresh one.
            self._lock = threading.Lock()
            self._lock_pid = pid
        with self._lock:
            state = self._clients_state
            if state is None or state.pid != pid:
                api = self._make_client(self.endpoint_url)
                public = (
                    api
                    if self.public_endpoint_url == self.endpoint_url
                    else self._make_client(self.public_endpoint_url)
                )
                # The parent's clients are dropped, not closed: closing would shut sockets the parent still uses.
                state = self._clients_state = _Clients(pid, api, public)
        return state

    def close(self) -> None:
        state, self._clients_state = self._clients_state, None
        if state is not None and state.pid == os.getpid():
            state.api.close()
            if state.public is not state.api:
                state.public.close()

    # -- errors ------------------------------------------------------------------------------------------------

    def _translate(self, exc: Exception, key: str | None) -> Exception:
        """Map a boto3/botocore error to the farm's: NotFound, StorageUnavailable, ConfigError or PermanentError."""
        from botocore import exceptions as bex

        # Messages that can reach a client (503 and 500 bodies, a job's error) name no bucket, key or endpoint.
        where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                return NotFound(f"no stored object {key!r}")
            if code in _THROTTLING_CODES or status == 429 or status >= 500:
                return StorageUnavailable(f"the object storage is unavailable ({code or status})")
            if code in _REFUSED_CODES or status in (301, 401, 403):
                # Where it happened is for the operator's log; the error itself can reach a client (a 500 body).
                log.warning("S3 refused a request for %s (%s)", where, code or status)
                return ConfigError(
                    f"the object storage refused a request ({code or status}); check {STORAGE_SETTING}, "
                    "RENDERFARM_S3_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    code="storage_refused",
                    field=STORAGE_SETTING,
                )
            return PermanentError(f"the object storage rejected a request ({code or status})", code="storage_rejected")
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
            return ConfigError(
                f"no usable S3 credentials for {STORAGE_SETTING} ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or give the machine a role",
                code="storage_credentials",
                field=STORAGE_SETTING,
            )
        if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError):
            return StorageUnavailable(f"the object storage is unreachable ({type(exc).__name__})")
        return exc

    def _call(self, key: str | None, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._clients().api
        try:
            return getattr(client, operation)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, key) from exc

    # -- the interface -----------------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> StoredObject:
        full_key = self._full_key(key)
        digest = checked_sha256(data, sha256)
        self._call(
            key,
            "put_object",
            Key=full_key,
            Body=data,
            ContentType=content_type,
            ContentLength=len(data),
            # The store checks the body against this and refuses a corrupted upload.
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),  # noqa: S324 - integrity, not security
            Metadata={"sha256": digest},
        )
        return StoredObject(key=key, sha256=digest, size=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        response = self._call(key, "get_object", Key=self._full_key(key))
        body = response["Body"]
        try:
            data: bytes = body.read()
        except BotoCoreError as exc:  # the connection dropped mid-body
            raise self._translate(exc, key) from exc
        finally:
            body.close()
        return data

    def head(self, key: str) -> StoredObject:
        response = self._call(key, "head_object", Key=self._full_key(key))
        size = int(response["ContentLength"])
        content_type = str(response.get("ContentType") or "application/octet-stream")
        sha256 = (response.get("Metadata") or {}).get("sha256")
        if not sha256:
            # Written by something other than the farm: compute it once from the data (slow, but right).
            sha256 = sha256_hex(self.get(key))
        return StoredObject(key=key, sha256=sha256, size=size, content_type=content_type)

    def exists(self, key: str) -> bool:
        try:
            self._call(key, "head_object", Key=self._full_key(key))
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(key, "delete_object", Key=self._full_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        validate_prefix(prefix)
        paginator = self._clients().api.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :]
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, prefix) from exc

    def download_url(self, key: str, expires_s: int) -> str:
        # Signed locally by the client of the public endpoint: no request is sent, and the host in the
        # signature is the one clients outside the cluster will use.
        url: str = self._clients().public.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._full_key(key)},
            ExpiresIn=check_expires_s(expires_s),
        )
        return url

    def check(self) -> None:
        """Raise unless the bucket exists and answers to our credentials (HEAD bucket)."""
        try:
            self._call(None, "head_bucket")
        except NotFound:
            # HEAD has no body, so a missing bucket is a bare 404.
            raise ConfigError(
                f"the bucket {self.bucket!r} of {STORAGE_SETTING} does not exist", field=STORAGE_SETTING
            ) from None
