"""The S3 tier's bucket, checked while the node runs.

At start the composition root checks the bucket once and refuses to start
without it (:func:`sprawl.storage.s3.check_at_start`).  Later the bucket can go
away (deleted, its store down, the keys revoked); segments then stay in LMDB
and reads below it fail, so the node must say so where orchestrators look:
``/readyz`` answers 503 with :attr:`BucketWatch.problem` as the reason until
the bucket answers again.

Every ``interval`` seconds one ``HEAD`` of the bucket runs on the S3 client's
bounded thread pool with short timeouts and no retries
(:meth:`~sprawl.storage.s3.S3Client.probe_bucket`), never on the reactor
thread, and never two at once.  A missing bucket is not re-created here: that
would hide the loss of the segments it held; the operator re-creates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import Clock
from sprawl.storage.s3 import ObjectMissing, S3Client

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()

#: Seconds between two checks of the bucket.
DEFAULT_INTERVAL = 10.0


class BucketWatch:
    """Probes the S3 bucket periodically; :attr:`problem` says what is wrong (None: nothing)."""

    def __init__(self, client: S3Client, clock: Clock, interval: float = DEFAULT_INTERVAL):
        self.client = client
        self.clock = clock
        self.interval = interval
        #: One line for ``/readyz`` while the last probe failed, else None.
        self.problem: str | None = None
        self.probes = 0
        self.failures = 0
        self._inflight = False
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """Probe every ``interval`` seconds (the first one an interval from now:
        the start check has just seen the bucket)."""
        if self._loop is None:
            self._loop = LoopingCall(self.probe)
            self._loop.clock = cast("IReactorTime", self.clock)
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """Stop probing (a probe in flight ends on its own, ignored)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def probe(self) -> None:
        """One check now, unless one is still running."""
        if self._inflight:
            return
        self._inflight = True
        self.probes += 1
        self.client.probe_bucket().addCallbacks(self._ok, self._failed)

    def _ok(self, _: object) -> None:
        self._inflight = False
        if self.problem is not None:
            log.info("S3 bucket {bucket} answers again; ready", bucket=self.client.settings.bucket)
        self.problem = None

    def _failed(self, f: Failure) -> None:
        self._inflight = False
        self.failures += 1
        s = self.client.settings
        if f.check(ObjectMissing):
            why = f"S3 bucket {s.bucket!r} at {s.endpoint} no longer exists (segments stay in LMDB; re-create it)"
        else:
            detail = " ".join(str(f.value).split())[:200]
            why = f"S3 bucket {s.bucket!r} at {s.endpoint} does not answer: {detail}"
        if why != self.problem:
            log.warn("{why}; /readyz reports not ready", why=why)
        self.problem = why
