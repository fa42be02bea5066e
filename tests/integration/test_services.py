"""The test harness itself: each service fixture gives a real, isolated, working service."""

from __future__ import annotations

import httpx
import redis
import sqlalchemy as sa

from tests.services import S3Server


def test_postgres_database_is_fresh_and_writable(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
            assert name.startswith("renderfarm_test_")
            conn.execute(sa.text("CREATE TABLE harness_probe (id int)"))
            conn.execute(sa.text("INSERT INTO harness_probe VALUES (1)"))
            assert conn.execute(sa.text("SELECT count(*) FROM harness_probe")).scalar_one() == 1
            conn.execute(sa.text("DROP TABLE harness_probe"))
    finally:
        engine.dispose()


def test_redis_database_is_claimed_and_empty(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        db = int(redis_url.rsplit("/", 1)[1])
        assert db != 0
        control = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/0")
        assert control.get(f"renderfarm-test-db:{db}") is not None
        control.close()
        client.set("harness-probe", "1")
        assert client.get("harness-probe") == b"1"
        client.delete("harness-probe")
    finally:
        client.close()


def test_s3_server_speaks_s3_over_http(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="probe.txt", Body=b"hello")
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "probe.txt"}, ExpiresIn=60)
    assert url.startswith(s3_server.endpoint_url)
    assert httpx.get(url).content == b"hello"
