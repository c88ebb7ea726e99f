"""Log observers of ``twistd sprawl``: text (twistd's default) or JSON lines.

twistd sets up logging *after* the plugin's ``makeService`` has run: it
looks for a ``--logger`` factory, then for an ``ILogObserver`` component on
the application, then builds its own text observer.  ``--log-format json``
uses the second, documented hook: :class:`LoggingMultiService` sets the JSON
observer as the application's ``ILogObserver`` component when twistd
attaches the service to the application, so twistd never creates a text
observer at all and every line on stdout is one JSON object.

``twistd --logger sprawl.log_observers.json_observer sprawl ...`` does the same for
any twistd version or plugin; it is the fallback documented in
docs/operations.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.application import service
from twisted.logger import ILogObserver, LogEvent, formatEvent, jsonFileLogObserver
from zope.interface import implementer


@implementer(ILogObserver)
class _WithText:
    """Adds ``text`` (the formatted message) to a copy of each event, then passes it on."""

    def __init__(self, inner: Callable[[LogEvent], None]) -> None:
        self.inner = inner

    def __call__(self, event: LogEvent) -> None:
        self.inner(dict(event, text=formatEvent(event)))


def json_observer(out: IO[str] | None = None) -> Callable[[LogEvent], None]:
    """An observer writing each event as one JSON line (``eventAsJSON``) to *out* (stdout).

    Each object holds twisted.logger's fields (``log_format``, ``log_level``,
    ``log_namespace``, ``log_time``, the event's own fields) plus ``text``,
    the formatted message.  Lines carry no record separator, so ``jq`` and
    log shippers read them as JSON lines; ``twisted.logger.eventsFromJSONLogFile``
    reads them back with ``recordSeparator=""``.
    """
    return _WithText(jsonFileLogObserver(out if out is not None else sys.stdout, recordSeparator=""))


class LoggingMultiService(service.MultiService):
    """The top service of ``twistd sprawl``; installs the JSON observer when asked.

    When twistd calls :meth:`setServiceParent` with the application (a
    ``Componentized``), a JSON observer is set as its ``ILogObserver``
    component before twistd starts logging.  An explicit ``twistd --logger``
    still takes precedence (twistd checks it first).
    """

    def __init__(self, log_format: str = "text", out: IO[str] | None = None) -> None:
        super().__init__()
        self.log_format = log_format
        self._out = out

    def setServiceParent(self, parent: Any) -> Any:
        """Attach to *parent*; when it is twistd's application, give it the log observer."""
        if self.log_format == "json" and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, json_observer(self._out))
        return super().setServiceParent(parent)
