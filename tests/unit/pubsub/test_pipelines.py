"""The pure pipeline core: which target records a run of source records yields, their
derived ids and keys, the position it goes on from, and definition validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.errors import BadRequest
from sprawl.log.record import Record
from sprawl.pubsub.pipelines import (
    REJECT_HEADER,
    PipelineCore,
    PipelineSpec,
    dead_letter,
    derived_id,
    reject_reason,
)


def _rec(offset: int, payload: object, key: str | None = None, control: bool = False) -> Record:
    body = json.dumps(payload).encode()
    return Record(offset, 2, 1000 + offset, f"src-{offset}", key, {"h": "v"}, body, True, control=control)


def _spec(**kw: str) -> PipelineSpec:
    return PipelineSpec.from_body("big", {"source": "orders", "target": "big-orders", **kw})


def test_filter_projection_and_key_remapping() -> None:
    """Selected records are projected, re-keyed and carry their origin; the others only
    move the position."""
    core = PipelineCore(_spec(filter="payload.total > `100`", fields="total,who", key="payload.who"))
    recs = [_rec(5, {"total": 50, "who": "a"}), _rec(6, {"total": 150, "who": "b", "x": 1}), _rec(7, "s")]
    out, pos = core.step(2, 5, recs)
    assert pos == 8
    (t,) = out
    assert json.loads(t.payload) == {"total": 150, "who": "b"} and t.key == "b"
    assert t.id == derived_id("big", 2, 6)
    assert t.headers == {
        "h": "v",
        "sprawl-pipeline": "big",
        "sprawl-source-partition": "2",
        "sprawl-source-offset": "6",
    }


def test_without_options_every_record_is_copied_with_its_key() -> None:
    """No filter, fields or key: a copy (new ids), control records skipped."""
    core = PipelineCore(_spec())
    out, pos = core.step(2, 0, [_rec(0, 1, key="k"), _rec(1, 2, control=True), _rec(2, 3)])
    assert pos == 3
    assert [(json.loads(r.payload), r.key) for r in out] == [(1, "k"), (3, None)]


def test_records_below_the_position_are_not_written_again() -> None:
    """A re-read from before the committed position yields nothing for those offsets."""
    core = PipelineCore(_spec())
    out, pos = core.step(2, 2, [_rec(0, 0), _rec(1, 1), _rec(2, 2)])
    assert [r.id for r in out] == [derived_id("big", 2, 2)] and pos == 3
    assert core.step(2, 9, []) == ([], 9), "nothing read: the position stays"


def test_non_string_keys_are_json_and_a_failing_key_is_none() -> None:
    core = PipelineCore(_spec(key="payload.n"))
    out, _ = core.step(2, 0, [_rec(0, {"n": 7}), _rec(1, {"m": 1}), _rec(2, "text")])
    assert [r.key for r in out] == ["7", None, None]


@given(
    name=st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True).filter(lambda s: s not in (".", "..")),
    p=st.integers(0, 65535),
    o=st.integers(0, 2**63 - 1),
)
def test_derived_ids_are_short_stable_and_distinct(name: str, p: int, o: int) -> None:
    """Ids fit a message id (<= 256 chars), are a function of (pipeline, partition,
    offset), and differ when any of the three does."""
    rid = derived_id(name, p, o)
    assert 1 <= len(rid) <= 256 and rid == derived_id(name, p, o)
    assert rid != derived_id(name, p, o + 1) and rid != derived_id(name, p + 1, o)
    assert rid != derived_id(name + "x", p, o)


@given(batches=st.lists(st.lists(st.integers(0, 300), max_size=10), max_size=10))
def test_any_split_of_the_source_yields_each_selected_record_once(batches: list[list[int]]) -> None:
    """However the source is cut into reads (each from at or before the position:
    overlapping, repeated, empty), the target gets each selected offset once and the
    position ends one past the last offset read."""
    core = PipelineCore(_spec(filter="payload.v > `150`"))
    pos, ids, top = 0, [], 0
    for b in batches:
        start = min([*b, pos])
        end = max([*b, start - 1]) + 1
        out, pos = core.step(2, pos, [_rec(o, {"v": o}) for o in range(start, end)])
        ids += [r.id for r in out]
        top = max(top, end)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(derived_id("big", 2, o) for o in range(151, top))
    assert pos == top


@pytest.mark.parametrize(
    "body",
    [
        {"source": "a"},
        {"source": "a", "target": "a"},
        {"source": "a", "target": "b", "filter": "payload.[["},
        {"source": "a", "target": "b", "key": 5},
        {"source": "a", "target": "b", "fields": "a..b"},
        {"source": "a", "target": "b", "extra": 1},
        {"source": "a/b", "target": "b"},
        [],
    ],
)
def test_bad_definitions_are_a_400_naming_the_fault(body: object) -> None:
    with pytest.raises(BadRequest):
        PipelineSpec.from_body("p", body)


def test_long_names_are_refused() -> None:
    """The position's group, pipeline.NAME, must stay a valid group name."""
    with pytest.raises(BadRequest):
        PipelineSpec.from_body("p" * 201, {"source": "a", "target": "b"})
    assert PipelineSpec.from_body("p" * 200, {"source": "a", "target": "b"}).name == "p" * 200


def test_definition_round_trips() -> None:
    spec = _spec(filter="key == 'x'", fields="a", key="headers.h")
    assert PipelineSpec.from_body("big", spec.to_dict()) == spec


def test_a_keyless_derived_record_has_one_target_partition_on_every_run() -> None:
    """Without a key, the target partition is named by the derived id, not chosen round
    robin: a re-run on another leader lands where the first copy's dedup window is."""
    from sprawl.pubsub.pipelines import target_partition

    core = PipelineCore(_spec(key="payload.none"))
    first, _ = core.step(1, 0, [_rec(o, {"n": o}) for o in range(40)])
    again, _ = PipelineCore(_spec(key="payload.none")).step(1, 0, [_rec(o, {"n": o}) for o in range(40)])
    assert all(r.key is None for r in first)
    parts = [target_partition(r, 4) for r in first]
    assert parts == [target_partition(r, 4) for r in again]
    assert set(parts) == {0, 1, 2, 3}  # spread over the partitions, not all in one
    keyed = Record(-1, 0, 0, "x", "user-1", None, b"{}", True)
    assert target_partition(keyed, 4) == __import__("zlib").crc32(b"user-1") % 4  # as any keyed publish
    assert target_partition(first[0], 1) == 0


# -- a record the target can never take (on_reject) ---------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"on_reject": "drop"},
        {"on_reject": 1},
        {"on_reject": "dead-letter"},  # no dead_letter_topic
        {"on_reject": "dead-letter", "dead_letter_topic": "orders"},  # the source
        {"on_reject": "dead-letter", "dead_letter_topic": "big-orders"},  # the target
        {"on_reject": "dead-letter", "dead_letter_topic": "a/b"},
        {"on_reject": "skip", "dead_letter_topic": "dlq"},
        {"dead_letter_topic": "dlq"},
    ],
)
def test_bad_on_reject_definitions_are_a_400(extra: dict[str, object]) -> None:
    with pytest.raises(BadRequest) as e:
        PipelineSpec.from_body("p", {"source": "orders", "target": "big-orders", **extra})
    assert e.value.code in ("invalid_field", "invalid_topic_name")


def test_on_reject_is_stored_only_when_not_the_default() -> None:
    """A definition without ``on_reject`` (or with ``stall``) stays the one a node of the
    release before reads; the others round-trip."""
    assert "on_reject" not in _spec().to_dict() and "on_reject" not in _spec(on_reject="stall").to_dict()
    dl = _spec(on_reject="dead-letter", dead_letter_topic="dlq")
    assert dl.to_dict()["on_reject"] == "dead-letter" and dl.to_dict()["dead_letter_topic"] == "dlq"
    assert PipelineSpec.from_body("big", dl.to_dict()) == dl
    assert PipelineSpec.from_body("big", _spec(on_reject="skip").to_dict()).on_reject == "skip"


def test_rejects_splits_what_the_target_can_never_take_with_the_reason() -> None:
    """Measured as a publish measures it: payload, key and headers, the origin headers
    aside; a key remap can be what makes a record too big."""
    core = PipelineCore(_spec(key="payload.k"))
    recs = [_rec(0, {"k": "a"}), _rec(1, {"k": "b" * 300}), _rec(2, {"k": "c"})]
    out, _ = core.step(2, 0, recs)
    limit = max(r.limited_bytes for r in out) - 1
    ok, refused = core.rejects(out, limit)
    assert [r.id for r in ok] == [out[0].id, out[2].id]
    ((bad, why),) = refused
    assert bad is out[1]
    assert (
        f"exceeds the topic's max_message_bytes {limit}" in why and f"message of {bad.limited_bytes}" in why
    )
    assert core.rejects(out, limit + 1) == (out, [])


def test_a_dead_letter_is_the_source_record_with_its_origin_and_the_reason() -> None:
    src = _rec(7, {"n": 1}, key="k")
    letter = dead_letter("big", 2, src, "too big" * 100)
    assert (letter.payload, letter.key, letter.is_text) == (src.payload, "k", True)
    assert letter.id == derived_id("big", 2, 7)
    h = letter.headers or {}
    assert h["h"] == "v" and h["sprawl-pipeline"] == "big"
    assert (h["sprawl-source-partition"], h["sprawl-source-offset"]) == ("2", "7")
    assert h[REJECT_HEADER] == ("too big" * 100)[:300]
    assert reject_reason(letter, letter.limited_bytes) is None
    assert reject_reason(letter, letter.limited_bytes - 1) is not None
