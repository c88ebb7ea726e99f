"""The S3 client adapter: botocore (boto3) calls on a bounded thread pool.

txaws cannot import on Python 3, so every call is a blocking botocore call run
with ``deferToThreadPool`` on a pool of ``concurrency`` threads: the reactor
never waits on the network, and at most ``concurrency`` requests are in
flight.  botocore retries 5xx answers, throttling and connection errors or
timeouts with exponential back-off and jitter (``standard`` retry mode,
``max_attempts`` tries).

Settings come from :class:`~sprawl.config.NodeConfig` (options, ``SPRAWL_S3_*``,
the seed's ``MINIO_*``); keys that are not given come from the standard AWS
credential chain (``AWS_*`` environment, ``~/.aws``, instance metadata).
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    t = threading.Thread(*args, **kwargs)
    t.daemon = True
    return t


class ObjectMissing(Exception):
    """The object (or bucket) does not exist."""


class S3Failure(Exception):
    """The object store refused or could not be reached (after retries)."""


@dataclass
class S3Settings:
    """Where the tier lives and how to talk to it."""

    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    create_bucket: bool = True
    concurrency: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5


def _error_code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _http_status(e: Exception) -> int:
    resp = getattr(e, "response", None) or {}
    return int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3Client:
    """Asynchronous object-store calls for one bucket."""

    def __init__(self, settings: S3Settings, reactor: Any):
        self.settings = settings
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=max(1, settings.concurrency), name="sprawl-s3")
        # Daemon threads: a call stuck on an unreachable store (botocore
        # timeouts and retries can take minutes) must not hold up the exit.
        self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._client: Any = None
        self.started = False
        #: Calls queued or running on the pool.
        self.in_flight = 0

    def start(self) -> None:
        """Start the thread pool (the botocore client is built on first use, off the reactor)."""
        if not self.started:
            self.pool.start()
            self.started = True

    def stop(self) -> None:
        """Stop the pool.  Calls still in flight are abandoned (their daemon
        threads end with the process) rather than waited for on the reactor
        thread: nothing they do is needed once LMDB is closed."""
        if not self.started:
            return
        self.started = False
        if self.in_flight:
            log.warn("abandoning {n} S3 call(s) in flight at shutdown", n=self.in_flight)
            return
        self.pool.stop()

    def _boto(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=s.endpoint,
                region_name=s.region,
                aws_access_key_id=s.access_key,
                aws_secret_access_key=s.secret_key,
                config=Config(
                    connect_timeout=s.connect_timeout,
                    read_timeout=s.read_timeout,
                    retries={"max_attempts": s.max_attempts, "mode": "standard"},
                    max_pool_connections=max(2, s.concurrency),
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def _call(self, fn: Any, *args: Any) -> Deferred[Any]:
        if not self.started:
            self.start()
        self.in_flight += 1
        d = deferToThreadPool(self.reactor, self.pool, self._guard, fn, *args)

        def done(result: Any) -> Any:
            self.in_flight -= 1
            return result

        return d.addBoth(done)

    @staticmethod
    def _guard(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ObjectMissing:
            raise
        except Exception as e:
            if _error_code(e) in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or _http_status(e) == 404:
                raise ObjectMissing(str(e)) from None
            raise S3Failure(f"{type(e).__name__}: {e}") from None

    # -- calls -----------------------------------------------------------------

    def ensure_bucket(self) -> Deferred[bool]:
        """Check the bucket exists; create it when missing and allowed.  Fires with True if created."""

        def run() -> bool:
            c = self._boto()
            b = self.settings.bucket
            try:
                c.head_bucket(Bucket=b)
                return False
            except Exception as e:
                if _error_code(e) not in ("404", "NoSuchBucket", "NotFound") and _http_status(e) != 404:
                    raise
            if not self.settings.create_bucket:
                raise ObjectMissing(f"bucket {b!r} does not exist (and creating it is not allowed)")
            c.create_bucket(Bucket=b)
            return True

        return self._call(run)

    def put(self, key: str, body: bytes, md5_hex: str, metadata: dict[str, str]) -> Deferred[str]:
        """Upload one object; the store checks the body against ``md5_hex`` (Content-MD5).

        Fires with the ETag the store answered.
        """

        def run() -> str:
            r = self._boto().put_object(
                Bucket=self.settings.bucket,
                Key=key,
                Body=body,
                ContentMD5=base64.b64encode(bytes.fromhex(md5_hex)).decode(),
                Metadata=metadata,
            )
            return str(r.get("ETag", "")).strip('"')

        return self._call(run)

    def head(self, key: str) -> Deferred[dict[str, Any]]:
        """``{"size", "etag", "metadata"}`` of an object; :class:`ObjectMissing` if absent."""

        def run() -> dict[str, Any]:
            r = self._boto().head_object(Bucket=self.settings.bucket, Key=key)
            return {
                "size": int(r["ContentLength"]),
                "etag": str(r.get("ETag", "")).strip('"'),
                "metadata": dict(r.get("Metadata") or {}),
            }

        return self._call(run)

    def get(self, key: str, start: int | None = None, length: int | None = None) -> Deferred[bytes]:
        """The object's bytes, or ``length`` bytes from ``start`` (a ranged GET)."""

        def run() -> bytes:
            kw: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": key}
            if start is not None and length is not None:
                kw["Range"] = f"bytes={start}-{start + length - 1}"
            r = self._boto().get_object(**kw)
            return bytes(r["Body"].read())

        return self._call(run)

    def delete(self, key: str) -> Deferred[None]:
        """Delete one object (absent is fine)."""

        def run() -> None:
            self._boto().delete_object(Bucket=self.settings.bucket, Key=key)

        return self._call(run)

    def list_keys(self, prefix: str) -> Deferred[list[str]]:
        """Every key under ``prefix`` (tests and diagnostics)."""

        def run() -> list[str]:
            out: list[str] = []
            pages = self._boto().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.settings.bucket, Prefix=prefix):
                out.extend(o["Key"] for o in page.get("Contents", []))
            return out

        return self._call(run)
