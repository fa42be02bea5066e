"""Where inputs, results, overlays and masks live."""

from shared.storage.s3 import (
    DOWNLOAD_ROUTE,
    MAX_DOWNLOAD_URL_EXPIRES_S,
    MAX_KEY_BYTES,
    LocalFolderStorage,
    S3Storage,
    Storage,
    StoredObject,
    artifact_key,
    asset_key,
    download_path,
    key_of_farm_url,
    load_or_create_signing_key,
    open_storage,
    validate_key,
)

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
