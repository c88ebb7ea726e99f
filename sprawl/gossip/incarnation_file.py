"""The saved incarnation of this node's gossip: ``DATA_DIR/gossip.json``,
written atomically whenever it changes (see :mod:`sprawl.gossip.udp`).
"""

from __future__ import annotations

import json
import os

from twisted.logger import Logger

from sprawl.gossip.membership import MAX_INCARNATION

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.gossip.udp")

STATE_FILE = "gossip.json"


def load_incarnation(data_dir: str) -> int | None:
    """The incarnation saved in ``DATA_DIR/gossip.json``, or None if there is
    none (or it is unreadable: a fresh start at 0 is then the only option)."""
    path = os.path.join(data_dir, STATE_FILE)
    try:
        with open(path) as f:
            value = json.load(f).get("incarnation")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as e:
        log.warn("ignoring unreadable {path}: {error}", path=path, error=str(e))
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_INCARNATION:
        return value
    log.warn("ignoring {path}: no valid incarnation", path=path)
    return None


def save_incarnation(data_dir: str, incarnation: int) -> None:
    """Write ``{"incarnation": N}`` to ``DATA_DIR/gossip.json`` atomically
    (temporary file, fsync, rename)."""
    path = os.path.join(data_dir, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"incarnation": incarnation}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
