"""S3 store specifics against a real S3 API server on loopback (moto server mode)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.stores.base import StorePermanentError, StoreUnavailable
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import AuthS3, boto3_client, free_port, new_bucket, s3_store_config

pytestmark = pytest.mark.integration


def make_store(endpoint: str, bucket: str, **extra: Any) -> S3Store:
    return S3Store("archive", S3StoreConfig.model_validate(s3_store_config(endpoint, bucket, **extra)))


async def test_checksums_encryption_and_storage_class_reach_the_server(s3_server: str) -> None:
    bucket = new_bucket(s3_server)
    store = make_store(s3_server, bucket, sse="AES256", storage_class="STANDARD_IA", prefix="p")
    data = b'{"Records":[\n{"eventID":"1"}\n]}'
    try:
        await store.put("trails/x.json.gz", data)
    finally:
        await store.close()
    s3 = boto3_client(s3_server)
    obj = s3.get_object(Bucket=bucket, Key="p/trails/x.json.gz", ChecksumMode="ENABLED")
    assert obj["Body"].read() == data
    assert obj["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert obj["ServerSideEncryption"] == "AES256"
    assert obj["StorageClass"] == "STANDARD_IA"


async def test_object_lock_retention_and_legal_hold_are_set(s3_server: str) -> None:
    bucket = new_bucket(s3_server, object_lock=True)
    store = make_store(
        s3_server, bucket, object_lock={"mode": "COMPLIANCE", "retain_days": 30, "legal_hold": True}
    )
    try:
        await store.check()
        await store.put("locked/a", b"evidence")
    finally:
        await store.close()
    head = boto3_client(s3_server).head_object(Bucket=bucket, Key="locked/a")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    until = head["ObjectLockRetainUntilDate"]
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    assert abs((until - expected).total_seconds()) < 3600


async def test_check_refuses_object_lock_on_a_bucket_without_it(s3_server: str) -> None:
    bucket = new_bucket(s3_server)
    store = make_store(s3_server, bucket, object_lock={"mode": "GOVERNANCE", "retain_days": 1})
    try:
        with pytest.raises(StorePermanentError) as err:
            await store.check()
    finally:
        await store.close()
    assert bucket in str(err.value)
    assert "Object Lock" in str(err.value)


async def test_missing_bucket_is_permanent_and_names_bucket_and_fix(s3_server: str) -> None:
    store = make_store(s3_server, "tk-no-such-bucket-here")
    try:
        for op in (store.put("a/b", b"x"), store.check()):
            started = time.monotonic()
            with pytest.raises(StorePermanentError) as err:
                await op
            text = str(err.value)
            assert "tk-no-such-bucket-here" in text
            assert "create bucket" in text
            assert time.monotonic() - started < 2, "a permanent error must not be retried"
    finally:
        await store.close()


async def test_bad_credentials_are_permanent_with_the_fix(s3_auth_server: AuthS3) -> None:
    bucket = s3_auth_server.new_bucket()
    good = make_store(
        s3_auth_server.endpoint,
        bucket,
        access_key_id=s3_auth_server.access_key,
        secret_access_key=s3_auth_server.secret_key,
    )
    bad_key = make_store(s3_auth_server.endpoint, bucket, access_key_id="AKIANOTAREALKEY00000")
    bad_secret = make_store(
        s3_auth_server.endpoint,
        bucket,
        access_key_id=s3_auth_server.access_key,
        secret_access_key="wrong-secret",
    )
    try:
        await good.put("ok", b"fine")
        with pytest.raises(StorePermanentError) as err:
            await bad_key.put("denied", b"x")
        assert "InvalidAccessKeyId" in str(err.value)
        assert bucket in str(err.value)
        assert "access_key_id" in str(err.value)
        with pytest.raises(StorePermanentError) as err2:
            await bad_secret.put("denied", b"x")
        assert "SignatureDoesNotMatch" in str(err2.value)
        assert "secret_access_key" in str(err2.value)
        with pytest.raises(StorePermanentError):
            await bad_key.check()
    finally:
        for s in (good, bad_key, bad_secret):
            await s.close()


async def test_unreachable_server_is_retryable_after_backoff() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = make_store(endpoint, "tk-any", retries={"attempts": 3, "initial": "10ms", "max": "50ms"})
    try:
        with pytest.raises(StoreUnavailable) as err:
            await store.put("a", b"x")
    finally:
        await store.close()
    assert err.value.retryable
    assert "tk-any" in str(err.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"access_key_id": "AKIA"}, "go together"),
        ({"kms_key_id": "k"}, "aws:kms"),
        ({"object_lock": {"mode": "COMPLIANCE", "retain_days": 1}, "checksum": []}, "checksum"),
        ({"prefix": "a/../b"}, "prefix"),
        ({"addressing_style": "dns"}, "addressing_style"),
        ({"endpoint_url": "minio:9000"}, "http:// or https://"),
    ],
)
def test_config_refuses_incoherent_settings(extra: dict[str, Any], message: str) -> None:
    doc = {"type": "s3", "bucket": "b-1", **extra}
    with pytest.raises(ValidationError) as err:
        S3StoreConfig.model_validate(doc)
    assert message in str(err.value)
