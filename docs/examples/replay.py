"""Replay a topic from an offset, a time or a saved position to stdout (one JSON line per
message), then print the position to resume from on stderr.  Stops after --idle seconds
without a message.

    python docs/examples/replay.py --topic orders --since-ms 1700000000000
    python docs/examples/replay.py --topic orders --resume 0:41,1:17,2:30
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sprawl.client import SprawlClient


def main() -> None:
    """Subscribe from the asked point and print every message until idle."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://localhost:8080")
    ap.add_argument("--topic", default="orders")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--since-ms", type=int, help="epoch milliseconds to start at")
    where.add_argument("--resume", help="P:OFFSET,... printed by an earlier run")
    ap.add_argument("--idle", type=float, default=3.0)
    args = ap.parse_args()
    client = SprawlClient(args.url, token=os.environ.get("SPRAWL_TOKEN"))
    sub = client.subscribe(
        args.topic,
        start="earliest",
        from_time=args.since_ms,
        resume=args.resume,
        idle_timeout=args.idle,
    )
    with sub:
        for m in sub:
            line = {"partition": m.partition, "offset": m.offset, "key": m.key, "payload": m.text()}
            print(json.dumps(line), flush=True)
    print(f"resume with --resume {sub.last_event_id or ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
