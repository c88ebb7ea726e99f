"""What a topic's config costs to turn into its JSON form (issue 23, create39).

``TopicConfig.to_dict`` runs on every node for each topic created (the
broker's persisted record) and twice on the node answering the create (the
record, and the description it answers with).  ``dataclasses.asdict``
deep-copied each scalar field: ~200 lines of Python a call, a few per cent
of a follower's whole create.  Counted in every file (the standard library
included), not timed.
"""

from __future__ import annotations

from dataclasses import asdict

from harness.lines import lines_run
from sprawl.topics import TopicConfig

#: Most lines of Python one ``to_dict`` may run (a flat copy of 11 fields runs ~15).
MOST_LINES = 30


def test_a_topic_configs_json_form_is_a_flat_copy() -> None:
    """The same dict as ``asdict`` (keys in field order), in a few lines."""
    cfg = TopicConfig(name="orders", uid=7, partitions=3, retention_ms=None, created_ms=12)
    assert cfg.to_dict() == asdict(cfg)
    assert list(cfg.to_dict()) == list(asdict(cfg))
    lines = lines_run(cfg.to_dict, "/")
    print(f"lines per TopicConfig.to_dict: {lines}")
    assert lines <= MOST_LINES, lines
