"""``sprawlctl``: the command-line client of a Sprawl cluster, one module per command group.

* :mod:`sprawl.ctl.root` -- the ``cli`` group, global options, error lines and exit codes,
  the ``--json`` decorator and the table formatting;
* :mod:`sprawl.ctl.messages` -- ``publish`` and ``subscribe``;
* :mod:`sprawl.ctl.topics` -- ``topics list|create|describe|delete``;
* :mod:`sprawl.ctl.groups` -- ``groups create|describe|delete|pull|ack|nack``;
* :mod:`sprawl.ctl.keys` -- ``keys generate`` (end-to-end encryption keys);
* :mod:`sprawl.ctl.pipelines` -- ``pipelines list|put|delete`` (derived topics);
* :mod:`sprawl.ctl.cluster` -- ``cluster status|members|placement|keygen`` and ``diagnose``;
* :mod:`sprawl.ctl.bench` -- ``bench`` (the engine is :mod:`sprawl.client.bench`);
* :mod:`sprawl.ctl.verify` -- ``verify`` and ``damage list|skip``;
* :mod:`sprawl.ctl.top` -- ``top`` (and ``cluster load``): present and predicted load.

The HTTP client, the SSE parser and the topic description are :mod:`sprawl.client`'s.
"""

from sprawl.ctl import (  # noqa: F401  (registers the commands)
    bench,
    cluster,
    groups,
    keys,
    messages,
    pipelines,
    top,
    topics,
    verify,
)
from sprawl.ctl.root import CtlError, cli, parse_urls

__all__ = ["CtlError", "cli", "main", "parse_urls"]


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sprawlctl")
