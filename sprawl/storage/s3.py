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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sprawl.interfaces import Clock

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads

log = Logger()


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    t = threading.Thread(*args, **kwargs)
    t.daemon = True
    return t


class ObjectMissing(Exception):
    """The object (or bucket) does not exist."""


class S3Failure(Exception):
    """The object store refused or could not be reached (after retries)."""


class S3Unusable(Exception):
    """The S3 tier cannot work as configured; the message is one line saying why and what to do."""


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


def boto_client(
    s: S3Settings,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    max_attempts: int | None = None,
) -> Any:
    """A botocore S3 client for ``s`` (timeouts and tries default to the settings').

    Raises ImportError when boto3 is not installed (it is a dependency of
    Sprawl: a broken or partial environment)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=s.endpoint,
        region_name=s.region,
        aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key,
        config=Config(
            connect_timeout=s.connect_timeout if connect_timeout is None else connect_timeout,
            read_timeout=s.read_timeout if read_timeout is None else read_timeout,
            retries={
                "max_attempts": s.max_attempts if max_attempts is None else max_attempts,
                "mode": "standard",
            },
            max_pool_connections=max(2, s.concurrency),
            s3={"addressing_style": "path"},
        ),
    )


def _missing(e: Exception) -> bool:
    return _error_code(e) in ("404", "NoSuchBucket", "NotFound") or _http_status(e) == 404


def _ensure_bucket(c: Any, bucket: str, create: bool) -> bool:
    """HEAD the bucket; create it when missing and ``create``.  True if created."""
    try:
        c.head_bucket(Bucket=bucket)
        return False
    except Exception as e:
        if not _missing(e):
            raise
    if not create:
        raise ObjectMissing(f"bucket {bucket!r} does not exist (and creating it is not allowed)")
    c.create_bucket(Bucket=bucket)
    return True


#: Seconds of connect / read timeout of the checks below (one botocore try each).
CHECK_CONNECT_TIMEOUT = 2.0
CHECK_READ_TIMEOUT = 5.0


def check_at_start(
    s: S3Settings,
    *,
    attempts: int = 3,
    budget: float = 6.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> bool:
    """Check, before the node starts, that its S3 tier can work: the client
    library imports and the bucket answers (created when missing and
    allowed).  Blocking, for the composition root before the reactor runs;
    at most ``attempts`` tries, a new one only within ``budget`` seconds of
    the first (each try bounded by the check timeouts), so a node that cannot
    use its store exits within seconds instead of serving without its third
    tier.  Returns True if it created the bucket; raises :class:`S3Unusable`
    with one line that says what is wrong and what to do."""
    where = f"S3 bucket {s.bucket!r} at {s.endpoint}"
    try:
        client = boto_client(
            s, connect_timeout=CHECK_CONNECT_TIMEOUT, read_timeout=CHECK_READ_TIMEOUT, max_attempts=1
        )
    except ImportError as e:
        raise S3Unusable(
            f"the S3 tier (--s3-endpoint) needs the boto3 package, which cannot be imported ({e}); "
            "install it into this environment (pip install boto3; installing Sprawl brings it) "
            "or start without --s3-endpoint"
        ) from None
    except Exception as e:
        raise S3Unusable(f"cannot set up an S3 client for {s.endpoint}: {_one_line(e)}") from None
    started = monotonic()
    last: Exception | None = None
    tries = 0
    for i in range(max(1, attempts)):
        tries += 1
        try:
            return _ensure_bucket(client, s.bucket, s.create_bucket)
        except ObjectMissing:
            raise S3Unusable(
                f"{where} does not exist and --s3-create-bucket is false; create the bucket, or let the node create it"
            ) from None
        except Exception as e:
            last = e
            if _refused(e):
                break  # an answer, not an outage: trying again says the same
        delay = 0.5 * 2**i
        if i + 1 >= attempts or monotonic() - started + delay > budget:
            break
        sleep(delay)
    assert last is not None
    took = monotonic() - started
    if _refused(last):
        raise S3Unusable(
            f"{where} refused the node ({_one_line(last)}); check the S3 keys "
            "(SPRAWL_S3_ACCESS_KEY / SPRAWL_S3_SECRET_KEY or the AWS credential chain), "
            "the bucket name and --s3-endpoint"
        )
    raise S3Unusable(
        f"{where} cannot be reached or created ({tries} tries in {took:.1f} s; last: {_one_line(last)}); "
        "check --s3-endpoint and that the object store is up"
    )


def _refused(e: Exception) -> bool:
    """An answer that retrying will not change: 4xx (bad keys, no such access, bad name), no keys at all."""
    return 400 <= _http_status(e) < 500 or type(e).__name__ in (
        "NoCredentialsError",
        "PartialCredentialsError",
    )


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


class S3Client:
    """Asynchronous object-store calls for one bucket."""

    def __init__(self, settings: S3Settings, reactor: Clock):
        self.settings = settings
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=max(1, settings.concurrency), name="sprawl-s3")
        # Daemon threads: a call stuck on an unreachable store (botocore
        # timeouts and retries can take minutes) must not hold up the exit.
        self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._client: Any = None
        #: A client with short timeouts and one try, for :meth:`probe_bucket`.
        self._probe_client: Any = None
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
            self._client = boto_client(self.settings)
        return self._client

    def _probe_boto(self) -> Any:
        if self._probe_client is None:
            self._probe_client = boto_client(
                self.settings,
                connect_timeout=CHECK_CONNECT_TIMEOUT,
                read_timeout=CHECK_READ_TIMEOUT,
                max_attempts=1,
            )
        return self._probe_client

    def _call(self, fn: Any, *args: Any) -> Deferred[Any]:
        if not self.started:
            self.start()
        self.in_flight += 1
        d = deferToThreadPool(cast("IReactorFromThreads", self.reactor), self.pool, self._guard, fn, *args)

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
            return _ensure_bucket(self._boto(), self.settings.bucket, self.settings.create_bucket)

        return self._call(run)

    def probe_bucket(self) -> Deferred[None]:
        """HEAD the bucket once, with short timeouts and no retries (the
        periodic health check: bounded, on the pool like every call); fails
        with :class:`ObjectMissing` when it is gone, :class:`S3Failure` when
        the store does not answer or refuses."""

        def run() -> None:
            self._probe_boto().head_bucket(Bucket=self.settings.bucket)

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

    def list_page(
        self, prefix: str, start_after: str | None = None, max_keys: int = 1000
    ) -> Deferred[tuple[list[tuple[str, float]], bool]]:
        """One page of the keys under ``prefix`` after ``start_after`` (at most
        ``max_keys``, in key order), each with its last-modified time (Unix
        seconds); and whether more follow."""

        def run() -> tuple[list[tuple[str, float]], bool]:
            kw: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": prefix, "MaxKeys": max_keys}
            if start_after:
                kw["StartAfter"] = start_after
            r = self._boto().list_objects_v2(**kw)
            page = [(str(o["Key"]), float(o["LastModified"].timestamp())) for o in r.get("Contents", [])]
            return page[:max_keys], bool(r.get("IsTruncated"))

        return self._call(run)
