"""``sprawlctl publish`` and ``sprawlctl subscribe`` (an SSE stream, or pull + ack through a
consumer group)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import click

from sprawl.client.blocking import Client, topic_path
from sprawl.client.e2e import (
    H_VERSION,
    DecryptError,
    Decryptor,
    Encryptor,
    load_private_keys,
    load_public_keys,
)
from sprawl.client.errors import ClientError, event_error_text
from sprawl.client.messages import Message
from sprawl.client.sse import sse_events
from sprawl.client.wire import lean_publish
from sprawl.ctl.root import ACKS, CtlError, Output, cell, cli, client_of, json_option, write_line

#: Messages per publish request when reading stdin or repeating with ``-c``.
PUBLISH_BATCH = 500
#: How many times in a row ``subscribe`` reconnects a dropped stream before giving up.
STREAM_RETRIES = 5


def message_bytes(msg: dict[str, Any]) -> bytes:
    """A message's payload as bytes (``payload`` as UTF-8, or ``payload_b64`` decoded)."""
    if "payload_b64" in msg and msg.get("payload") is None:
        try:
            return base64.b64decode(msg["payload_b64"])
        except (ValueError, TypeError):
            return str(msg["payload_b64"]).encode()
    payload = msg.get("payload")
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return json.dumps(payload).encode()


def _emit_message(msg: dict[str, Any], out: Output) -> None:
    out.show(msg, lambda m: write_line(message_bytes(m)))


class _Opener:
    """What ``subscribe --decrypt-with`` does to each message: decrypt it, or say on stderr why
    it cannot be (it is then not printed)."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        try:
            self.decryptor = Decryptor(load_private_keys(paths)) if paths else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--decrypt-with'") from None

    def open(self, topic: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The message with its plaintext payload, or None (reported) when it cannot be opened."""
        if self.decryptor is None:
            return msg
        try:
            opened = self.decryptor.open(Message.parse(topic, msg))
        except DecryptError as exc:
            click.echo(f"sprawlctl: warning: not delivered: {exc}", err=True)
            return None
        out = {k: v for k, v in msg.items() if k not in ("payload", "payload_b64", "headers")}
        out["headers"] = opened.headers
        return {**out, **_payload_field(opened.payload)}


def _encryptor(paths: tuple[str, ...]) -> Encryptor | None:
    if not paths:
        return None
    try:
        return Encryptor(load_public_keys(paths))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--encrypt-for'") from None


def _payload_field(data: bytes | str) -> dict[str, str]:
    """``{"payload": text}`` for UTF-8 input, else ``{"payload_b64": ...}``."""
    if isinstance(data, str):
        return {"payload": data}
    try:
        return {"payload": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode("ascii")}


def _stdin_bytes() -> IO[bytes]:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def _read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _publish_lines(answer: Any) -> None:
    if not isinstance(answer, dict):
        raise CtlError(f"unexpected publish answer: {answer!r}"[:200])
    offsets = answer.get("offsets") or []
    ids = answer.get("ids") or [None] * len(offsets)
    parts = answer.get("partitions") or [None] * len(offsets)
    for offset, partition, msg_id in zip(offsets, parts, ids, strict=False):
        click.echo(f"offset={offset} partition={cell(partition)} id={cell(msg_id)}")


@cli.command()
@click.option("-t", "--topic", required=True, help="Topic to publish to.")
@click.option(
    "-m",
    "-p",
    "--message",
    "--payload",
    "message",
    metavar="MSG",
    help="Message text; '-' reads stdin, one message per line.",
)
@click.option(
    "-f",
    "--file",
    "path",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Send the file's bytes as one message; '-' reads stdin, one message per line.",
)
@click.option(
    "-c",
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Publish the message this many times (batched).",
)
@click.option("-k", "--key", help="Partitioning key.")
@click.option("--id", "msg_id", help="Message id for idempotent publish.")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME=VALUE", help="Message header.")
@click.option("--acks", type=ACKS, help="Wait for quorum (default), leader or no acknowledgement.")
@click.option(
    "--encrypt-for",
    "encrypt_for",
    multiple=True,
    metavar="KEYFILE",
    type=click.Path(dir_okay=False),
    help="Encrypt each payload end to end for this public key file (repeat for more recipients).",
)
@click.option(
    "--wire",
    type=click.Choice(["json", "lean"]),
    default="json",
    show_default=True,
    help="json: JSON batches; lean: one msgpack body per batch (binary payloads without base64; "
    "JSON to a node older than the lean formats).",
)
@json_option()
@click.pass_context
def publish(
    ctx: click.Context,
    topic: str,
    message: str | None,
    path: str | None,
    count: int,
    key: str | None,
    msg_id: str | None,
    headers: tuple[str, ...],
    acks: str | None,
    encrypt_for: tuple[str, ...],
    wire: str,
    out: Output,
) -> None:
    """Publish messages to a topic; prints offset, partition and id of each."""
    client = client_of(ctx)
    encryptor = _encryptor(encrypt_for)
    if (message is None) == (path is None):
        raise click.UsageError("give exactly one of -m/--message and -f/--file")
    header_map: dict[str, str] = {}
    for spec in headers:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {spec!r}", param_hint="'--header'")
        header_map[name] = value
    extra: dict[str, Any] = {}
    if key is not None:
        extra["key"] = key
    if header_map:
        extra["headers"] = header_map
    if msg_id is not None:
        extra["id"] = msg_id
    url_path = topic_path(topic, "messages")

    if encryptor is not None and any(h.startswith(H_VERSION) for h in header_map):
        raise click.BadParameter(
            f"headers starting with {H_VERSION!r} are the envelope's", param_hint="'--header'"
        )

    def send(messages: list[dict[str, Any]]) -> None:
        if encryptor is not None:
            messages = [encryptor.seal_item(m) for m in messages]
        body: dict[str, Any] = {"messages": messages}
        if acks is not None:
            body["acks"] = acks
        lean = lean_publish(messages, acks) if wire == "lean" else None
        out.show(client.request("POST", url_path, body, lean=lean).check().json(), _publish_lines)

    if message == "-" or path == "-":
        if count != 1 or msg_id is not None:
            raise click.UsageError("-c and --id cannot be used when reading messages from stdin")
        lines = _read_lines(_stdin_bytes())
        for batch in _batches(({**_payload_field(ln), **extra} for ln in lines), PUBLISH_BATCH):
            send(batch)
        return
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CtlError(f"cannot read {path}: {exc.strerror or exc}") from None
        if count == 1 and not extra and acks is None and encryptor is None:
            # One raw message: the body is the payload, byte for byte.
            reply = client.request("POST", url_path, body=data).check()
            out.show(reply.json(), _publish_lines)
            return
        item: dict[str, Any] = {**_payload_field(data), **extra}
    else:
        assert message is not None
        item = {"payload": message, **extra}
    remaining = count
    while remaining:
        n = min(remaining, PUBLISH_BATCH)
        send([item] * n)
        remaining -= n


# --------------------------------------------------------------------------------------------
def _noting_wait(lines: Iterable[bytes], topic: str, say: bool) -> Iterator[bytes]:
    """``lines``, saying on stderr (when ``say``) that the node waits for the topic to be created."""
    for line in lines:
        if say and line.startswith(b": waiting for topic "):
            click.echo(f"waiting for topic {topic!r} to be created ...", err=True)
            say = False
        yield line


class _Idle(Exception):
    """No message arrived within ``--idle-timeout``."""


def _response_lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """Lines of a streamed body until it ends or breaks; a read timeout raises :class:`_Idle`."""
    while True:
        try:
            line = resp.readline()
        except TimeoutError:
            raise _Idle from None
        except (OSError, http.client.HTTPException):
            return
        if not line:
            return
        yield line


def _stream_subscribe(
    client: Client,
    topic: str,
    start: str,
    partition: int | None,
    count: int | None,
    out: Output,
    idle_timeout: float | None,
    opener: _Opener,
    select: dict[str, str | None],
) -> int:
    """Print messages from the SSE stream; reconnect (with Last-Event-ID) when it drops."""
    received = 0
    last_id: str | None = None
    failures = 0
    last_message = time.monotonic()
    path = topic_path(topic, "stream")
    query = {"from": start, "partition": partition, **select}
    waiting_since: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else None
        try:
            conn, resp = client.stream(path, query, headers, read_timeout=idle_timeout)
        except ClientError as e:
            if received == 0 and "topic_not_found" in str(e):
                # Subscribers may start first: wait for the topic to appear
                # (the first publish creates it), within --idle-timeout if set.
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    click.echo(f"waiting for topic {topic!r} to be created ...", err=True)
                if idle_timeout and now - waiting_since > idle_timeout:
                    raise
                time.sleep(0.5)
                continue
            if received == 0 or failures >= STREAM_RETRIES:
                raise
            failures += 1
            time.sleep(min(0.25 * 2**failures, 5.0))
            continue
        try:
            for event in sse_events(_noting_wait(_response_lines(resp), topic, received == 0)):
                if event.event == "error":
                    raise CtlError(event_error_text(event.data))
                if event.event != "message":
                    continue
                try:
                    msg = json.loads(event.data)
                except ValueError:
                    raise CtlError(f"malformed event data: {event.data[:80]!r}") from None
                failures = 0
                last_message = time.monotonic()
                last_id = event.id or last_id
                shown = opener.open(topic, msg)
                if shown is None:
                    continue
                _emit_message(shown, out)
                received += 1
                if count is not None and received >= count:
                    return received
            if idle_timeout and time.monotonic() - last_message > idle_timeout:
                raise _Idle
        except _Idle:
            return received
        finally:
            conn.close()
        failures += 1
        if failures > STREAM_RETRIES:
            raise CtlError(f"stream of {topic!r} keeps ending; gave up after {STREAM_RETRIES} retries")
        time.sleep(min(0.25 * 2**failures, 5.0))


def _group_subscribe(
    client: Client,
    topic: str,
    group: str,
    start: str,
    count: int | None,
    out: Output,
    wait_ms: int,
    idle_timeout: float | None,
    opener: _Opener,
    select: dict[str, str | None],
) -> int:
    """Pull, print and ack messages through consumer group ``group`` (nack what cannot be
    decrypted: it is redelivered, then dead-lettered as the group is configured)."""
    client.call("PUT", topic_path(topic, "groups", group), {"start": start})
    pull_path = topic_path(topic, "groups", group, "pull")
    ack_path = topic_path(topic, "groups", group, "ack")
    received = 0
    last_message = time.monotonic()
    while count is None or received < count:
        wait = wait_ms
        if idle_timeout:
            left = idle_timeout - (time.monotonic() - last_message)
            if left <= 0:
                break
            wait = min(wait, int(left * 1000) + 1)
        want = 100 if count is None else min(100, count - received)
        answer = client.call(
            "POST",
            pull_path,
            {"max": want, "wait_ms": wait},
            query=select,
            timeout=client.timeout + wait / 1000,
        )
        messages = (answer or {}).get("messages") or []
        done: list[str] = []
        refused: list[str] = []
        for msg in messages:
            shown = opener.open(topic, msg)
            if shown is None:
                refused.append(msg["ack_id"])
                continue
            _emit_message(shown, out)
            done.append(msg["ack_id"])
        if done:
            client.call("POST", ack_path, {"ack_ids": done})
        if refused:
            nack = {"ack_ids": refused, "delay_ms": 1000}
            client.call("POST", topic_path(topic, "groups", group, "nack"), nack)
        if messages:
            last_message = time.monotonic()
        received += len(done)
    return received


@cli.command()
@click.option("-t", "--topic", required=True, help="Topic to read.")
@click.option(
    "--from",
    "start",
    default="latest",
    show_default=True,
    metavar="earliest|latest|N",
    help="Where to start: earliest, latest or an offset.",
)
@click.option("--partition", type=click.IntRange(min=0), help="Read only this partition.")
@click.option("--group", help="Consume as a member of this consumer group (pull + ack).")
@click.option("-c", "--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@json_option("Print each whole message as JSON.")
@click.option(
    "--wait-ms",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Long-poll time of each group pull.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="Stop after S seconds without a message (0 = never); with -c, fewer than -c "
    "messages is then an error.",
)
@click.option(
    "--filter",
    "filter_expr",
    metavar="EXPR",
    help="Only messages this JMESPath expression selects (evaluated on the node), e.g. "
    "\"headers.kind == 'order' && payload.total > `100`\"; with --group the node acks the others.",
)
@click.option("--fields", metavar="A,B.C", help="Deliver JSON payloads with only these fields.")
@click.option(
    "--decrypt-with",
    "decrypt_with",
    multiple=True,
    metavar="KEYFILE",
    type=click.Path(dir_okay=False),
    help="Decrypt end-to-end encrypted payloads with this private key file (repeat while keys "
    "rotate); a message none opens is reported on stderr and not printed (with --group: nacked).",
)
@click.pass_context
def subscribe(
    ctx: click.Context,
    topic: str,
    start: str,
    partition: int | None,
    group: str | None,
    count: int | None,
    out: Output,
    wait_ms: int,
    idle_timeout: float,
    filter_expr: str | None,
    fields: str | None,
    decrypt_with: tuple[str, ...],
) -> None:
    """Print each message's payload on its own line as it arrives (Ctrl-C stops)."""
    client = client_of(ctx)
    opener = _Opener(decrypt_with)
    select = {"filter": filter_expr, "fields": fields}
    if start not in ("earliest", "latest") and not start.isdigit():
        raise click.BadParameter("expected earliest, latest or an offset", param_hint="'--from'")
    try:
        if group is not None:
            if start not in ("earliest", "latest"):
                raise click.BadParameter("with --group only earliest or latest", param_hint="'--from'")
            if partition is not None:
                raise click.UsageError("--partition cannot be combined with --group")
            received = _group_subscribe(
                client, topic, group, start, count, out, wait_ms, idle_timeout or None, opener, select
            )
        else:
            received = _stream_subscribe(
                client, topic, start, partition, count, out, idle_timeout or None, opener, select
            )
    except KeyboardInterrupt:
        return
    if count is not None and received < count:
        raise CtlError(f"received {received} of {count} messages within --idle-timeout")


# --------------------------------------------------------------------------------------------
