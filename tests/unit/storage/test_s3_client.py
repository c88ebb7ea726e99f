"""The S3 client adapter against a real SeaweedFS server: calls run off the reactor thread."""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import pytest
import pytest_twisted

from harness import SeaweedProcess, bounded, the_reactor
from sprawl.storage.s3 import ObjectMissing, S3Client, S3Failure, S3Settings

pytestmark = pytest.mark.xdist_group("s3")


def _client(server: SeaweedProcess, bucket: str, **kw: Any) -> S3Client:
    settings = S3Settings(
        endpoint=server.endpoint,
        bucket=bucket,
        access_key=SeaweedProcess.ACCESS_KEY,
        secret_key=SeaweedProcess.SECRET_KEY,
        **kw,
    )
    return S3Client(settings, the_reactor())


@pytest_twisted.ensureDeferred
async def test_bucket_created_put_verified_ranged_get_delete(seaweed: SeaweedProcess) -> None:
    """A missing bucket is created; put answers the MD5 ETag; HEAD, ranged GET and delete work;
    a missing key is :class:`ObjectMissing`; the calls run on the pool, not the reactor thread."""
    bucket = f"c-{uuid.uuid4().hex[:10]}"
    c = _client(seaweed, bucket)
    try:
        assert await bounded(c.ensure_bucket(), 60) is True
        assert await bounded(c.ensure_bucket(), 60) is False
        body = bytes(range(256)) * 40
        md5 = hashlib.md5(body).hexdigest()
        etag = await bounded(c.put("a/b.seg", body, md5, {"sha256": "x"}), 60)
        assert etag == md5
        head = await bounded(c.head("a/b.seg"), 30)
        assert head["size"] == len(body) and head["metadata"]["sha256"] == "x"
        assert await bounded(c.get("a/b.seg", 300, 10), 30) == body[300:310]
        assert await bounded(c.list_keys("a/"), 30) == ["a/b.seg"]
        await bounded(c.delete("a/b.seg"), 30)
        with pytest.raises(ObjectMissing):
            await bounded(c.head("a/b.seg"), 30)
        with pytest.raises(ObjectMissing):
            await bounded(c.get("a/b.seg"), 30)
        threads: list[str] = []
        await bounded(c._call(lambda: threads.append(threading.current_thread().name)), 30)
        assert threads and threads[0] != threading.main_thread().name
    finally:
        c.stop()


@pytest_twisted.ensureDeferred
async def test_a_body_that_does_not_match_its_md5_is_refused(seaweed: SeaweedProcess) -> None:
    """Content-MD5 makes the store check what it received: a mismatch is an upload failure."""
    bucket = f"m-{uuid.uuid4().hex[:10]}"
    c = _client(seaweed, bucket, max_attempts=1)
    try:
        await bounded(c.ensure_bucket(), 60)
        with pytest.raises(S3Failure):
            await bounded(c.put("k", b"hello", hashlib.md5(b"other").hexdigest(), {}), 60)
        with pytest.raises(ObjectMissing):
            await bounded(c.head("k"), 30)
    finally:
        c.stop()


@pytest_twisted.ensureDeferred
async def test_bucket_not_created_when_not_allowed(seaweed: SeaweedProcess) -> None:
    """With creation off, a missing bucket is reported, not made."""
    c = _client(seaweed, f"n-{uuid.uuid4().hex[:10]}", create_bucket=False)
    try:
        with pytest.raises(ObjectMissing, match="not allowed"):
            await bounded(c.ensure_bucket(), 60)
    finally:
        c.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_endpoint_fails_after_retries() -> None:
    """Nothing listening: the call fails (after botocore's retries) with :class:`S3Failure`."""
    from harness import free_port

    settings = S3Settings(
        endpoint=f"http://127.0.0.1:{free_port()}",
        bucket="nobody",
        access_key="a",
        secret_key="b",
        max_attempts=2,
        connect_timeout=1,
    )
    c = S3Client(settings, the_reactor())
    try:
        with pytest.raises(S3Failure):
            await bounded(c.head("k"), 60)
    finally:
        c.stop()


@pytest_twisted.ensureDeferred
async def test_stop_does_not_wait_for_a_stuck_call() -> None:
    """A call stuck in the pool (an unreachable store) does not block ``stop`` on the reactor
    thread; its thread is a daemon, so it cannot hold up the process exit either."""
    settings = S3Settings(endpoint="http://127.0.0.1:9", bucket="b", access_key="a", secret_key="b")
    c = S3Client(settings, the_reactor())
    release = threading.Event()
    seen: list[threading.Thread] = []
    entered = threading.Event()

    def stuck() -> None:
        seen.append(threading.current_thread())
        entered.set()
        release.wait(30)

    d = c._call(stuck)
    assert entered.wait(10)
    assert c.in_flight == 1 and seen[0].daemon
    c.stop()  # returns at once
    assert not c.started
    release.set()
    await bounded(d, 10)
    assert c.in_flight == 0


@pytest.fixture(params=["seaweedfs", "memory"])
def either_store(request: pytest.FixtureRequest) -> Any:
    """The real client against SeaweedFS, and the in-memory fake the in-process tier tests use:
    the contract below holds for both."""
    from sprawl.testing import MemoryS3

    if request.param == "memory":
        yield MemoryS3(bucket="contract")
        return
    server = request.getfixturevalue("seaweed")
    c = _client(server, f"l-{uuid.uuid4().hex[:10]}")
    yield c
    c.stop()


@pytest_twisted.ensureDeferred
async def test_store_contract_put_head_get_list_pages_delete(either_store: Any) -> None:
    """What the tier relies on, the same for the real store and the fake: a body
    must match its MD5; HEAD gives size, MD5 ETag and metadata; a ranged GET;
    pages of keys under a prefix, in order, after a key, each with its
    last-modified time, and whether more follow; deleting a missing key is fine."""
    import time

    s = either_store
    await bounded(s.ensure_bucket(), 60)
    with pytest.raises(S3Failure):
        await bounded(s.put("p/x", b"hello", hashlib.md5(b"other").hexdigest(), {}), 60)
    keys = [f"p/{i:02d}" for i in range(5)] + ["p2/00", "q/00"]
    before = time.time() - 120
    for k in keys:
        body = k.encode() * 3
        await bounded(s.put(k, body, hashlib.md5(body).hexdigest(), {"sha256": k}), 60)
    head = await bounded(s.head("p/01"), 30)
    assert head["size"] == 12 and head["etag"] == hashlib.md5(b"p/01" * 3).hexdigest()
    assert head["metadata"]["sha256"] == "p/01"
    assert await bounded(s.get("p/01", 4, 4), 30) == b"p/01"
    page, more = await bounded(s.list_page("p/", None, 2), 30)
    assert [k for k, _ in page] == ["p/00", "p/01"] and more
    assert all(before <= t <= time.time() + 120 for _, t in page)
    page, more = await bounded(s.list_page("p/", "p/01", 10), 30)
    assert [k for k, _ in page] == ["p/02", "p/03", "p/04"] and not more
    await bounded(s.delete("p/03"), 30)
    await bounded(s.delete("p/03"), 30)
    with pytest.raises(ObjectMissing):
        await bounded(s.head("p/03"), 30)
    page, more = await bounded(s.list_page("p/", None, 10), 30)
    assert [k for k, _ in page] == ["p/00", "p/01", "p/02", "p/04"] and not more
