"""Where inputs, results, overlays and masks live: one `Storage` interface, two backends.

    Storage (ABC)
    ├── LocalFolderStorage   the embedded default: a folder, served by the API under /v1/files/{key}
    └── S3Storage            any S3-compatible store through boto3 (AWS, MinIO, R2, moto)

Keys are `/`-separated relative paths (`validate_key`); the farm builds them with `artifact_key` and `asset_key`.
Every stored object keeps its sha256 beside it, so `head()` answers without reading the data.

Errors: a missing object is `NotFound`; a store that is briefly unreachable, throttling or failing (5xx) is
`StorageUnavailable` (transient: the job is retried); a store that refuses us (bad credentials, no such bucket) is
`ConfigError` naming RENDERFARM_STORAGE_URL (permanent: retrying cannot help).

One module per job: `keys` (the key rule and the farm's key scheme), `interface` (`Storage`, `StoredObject`),
`local_folder` (the folder and its signed download URLs), `s3`, `from_settings` (`open_storage`, the signing key)
and `farm_urls` (the key a URL of the farm's own storage names). Callers import from `shared.storage`.
"""

from shared.storage.farm_urls import key_of_farm_url
from shared.storage.from_settings import load_or_create_signing_key, open_storage
from shared.storage.interface import MAX_DOWNLOAD_URL_EXPIRES_S, Storage, StoredObject
from shared.storage.keys import MAX_KEY_BYTES, artifact_key, asset_key, validate_key
from shared.storage.local_folder import DOWNLOAD_ROUTE, LocalFolderStorage, download_path
from shared.storage.s3 import S3Storage

__all__ = [
    "DOWNLOAD_ROUTE",
    "MAX_DOWNLOAD_URL_EXPIRES_S",
    "MAX_KEY_BYTES",
    "LocalFolderStorage",
    "S3Storage",
    "Storage",
    "StoredObject",
    "artifact_key",
    "asset_key",
    "download_path",
    "key_of_farm_url",
    "load_or_create_signing_key",
    "open_storage",
    "validate_key",
]
