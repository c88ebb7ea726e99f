"""The root of ``sprawlctl``: the ``cli`` group with its global options (nodes, timeout,
token, CA bundle), the one-line error report and exit codes, the ``--json`` decorator every
command that can answer in JSON shares, and the table and value formatting of the human
output.

Every command except ``bench`` speaks plain synchronous HTTP through
:class:`sprawl.client.blocking.Client` to the first node of ``-n URL[,URL...]`` that answers;
a node that refuses the connection or times out is skipped. Failures end with a non-zero exit
status and one line on stderr::

    sprawlctl: error: not_found: topic 'x' does not exist
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, TypeVar

import click

from sprawl import __version__
from sprawl.client.blocking import DEFAULT_URL, Client, split_urls
from sprawl.client.errors import ClientError

ACKS = click.Choice(["quorum", "leader", "none"])
STORAGE = click.Choice(["durable", "ephemeral"])
START = click.Choice(["earliest", "latest"])
#: Raised by click >= 8.2 for a bare group invocation; it shows the help, not an error line.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", click.UsageError)

F = TypeVar("F", bound=Callable[..., Any])


class CtlError(click.ClickException):
    """A failure reported as one ``sprawlctl: error: ...`` line and exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        """Write the one-line error to stderr."""
        _error_line(self.format_message())


def _error_line(message: str) -> None:
    text = " ".join(message.split()) or "failed"
    click.echo(f"sprawlctl: error: {text}", err=True)


def parse_urls(values: Iterable[str]) -> list[str]:
    """Split ``-n`` values on commas, add ``http://`` where no scheme is given, drop dupes."""
    try:
        return split_urls(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'-n'") from None


# --------------------------------------------------------------------------------------------
# output


class Output:
    """How one command prints what it got: the raw JSON (``--json``) or its human form."""

    def __init__(self, as_json: bool) -> None:
        #: True with ``--json``.
        self.as_json = as_json

    def show(self, value: Any, human: Callable[[Any], None] | None = None) -> None:
        """Print ``value`` as one line of JSON with ``--json`` (or without a ``human`` form),
        else call ``human(value)``."""
        if self.as_json or human is None:
            print_json(value)
        else:
            human(value)


def json_option(help: str = "Print the raw JSON answer.") -> Callable[[F], F]:
    """The ``--json`` flag of a command: the command gets ``out`` (an :class:`Output`) in place
    of the flag and prints through ``out.show``."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_output(*args: Any, as_json: bool, **kwargs: Any) -> Any:
            return command(*args, out=Output(as_json), **kwargs)

        return click.option("--json", "as_json", is_flag=True, help=help)(with_output)  # type: ignore[return-value]

    return decorate


def write_line(data: bytes) -> None:
    """Write one line of bytes to stdout and flush it (pipes see messages as they arrive)."""
    click.echo(data)


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout."""
    click.echo(json.dumps(value, sort_keys=False))


def cell(value: Any) -> str:
    """A value as a table cell: ``-`` for None, ``yes``/``no``, lists joined by commas."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows as left-aligned columns under upper-case headers."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def human_bytes(n: Any) -> str:
    """A byte count in B, KiB, MiB, ..."""
    if not isinstance(n, (int, float)):
        return cell(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # unreachable


# --------------------------------------------------------------------------------------------
# the command group


class _Cli(click.Group):
    """The root group: reports every failure as one line on stderr."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; exit with 0, 1 (failure), 2 (usage) or 130 (interrupted)."""
        code: int
        try:
            rv = super().main(args, prog_name or "sprawlctl", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _NO_ARGS_IS_HELP as exc:
            exc.show()
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error_line(exc.format_message() + hint)
            code = exc.exit_code
        except ClientError as exc:
            _error_line(str(exc))
            code = 1
        except click.ClickException as exc:
            if isinstance(exc, CtlError):
                exc.show()
            else:
                _error_line(exc.format_message())
            code = exc.exit_code
        except click.Abort:
            _error_line("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-n",
    "--nodes",
    "nodes",
    multiple=True,
    envvar="SPRAWL_URL",
    metavar="URL[,URL...]",
    help=f"Node URLs to use, in order of preference (env SPRAWL_URL; default {DEFAULT_URL}). "
    "A node that is down is skipped.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    envvar="SPRAWL_TIMEOUT",
    help="Seconds to wait for a node to connect and answer.",
)
@click.option(
    "--token",
    envvar="SPRAWL_TOKEN",
    metavar="TOKEN",
    help="Bearer token for nodes with authentication on (env SPRAWL_TOKEN; prefer the variable: "
    "arguments are visible to other users).",
)
@click.option(
    "--cacert",
    envvar="SPRAWL_CACERT",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle that https:// nodes' certificates must chain to (env SPRAWL_CACERT).",
)
@click.version_option(__version__, prog_name="sprawlctl")
@click.pass_context
def cli(
    ctx: click.Context, nodes: tuple[str, ...], timeout: float, token: str | None, cacert: str | None
) -> None:
    """Operate a Sprawl pub/sub cluster over its HTTP API."""
    ctx.obj = Client(
        parse_urls(nodes), timeout, token=token, cacert=cacert, user_agent=f"sprawlctl/{__version__}"
    )


def client_of(ctx: click.Context) -> Client:
    """The client the root group built from the global options."""
    client = ctx.find_object(Client)
    assert client is not None
    return client
