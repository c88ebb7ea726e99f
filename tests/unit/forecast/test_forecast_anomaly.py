"""Anomaly events (sprawl.forecast.anomaly) and the forecaster that feeds them
from gossip (sprawl.forecast.traffic)."""

from __future__ import annotations

import random

import pytest

from sprawl.forecast.anomaly import DROP, LOG_CLOSE, LOG_OPEN, SILENT, SURGE, AnomalyConfig, AnomalyDetector
from sprawl.forecast.holtwinters import Band, ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, node_key, partition_key, topic_key

BAND = Band(100.0, 80.0, 120.0)


def run(det: AnomalyDetector, values: list[float], band: Band = BAND) -> list[tuple[float, str, bool]]:
    out = []
    for i, y in enumerate(values):
        for ev in det.sample(float(i), y, band):
            out.append((float(i), ev.kind, ev.end is None))
    return out


def test_surge_opens_after_enter_and_closes_after_leave() -> None:
    """Two samples above the interval open one surge; three back inside close it."""
    det = AnomalyDetector("x")
    events = run(det, [100, 300, 100, 300, 320, 500, 310, 100, 100, 100, 100])
    assert events == [(4.0, SURGE, True), (9.0, SURGE, False)]
    closed = det.open is None
    assert closed
    # the event starts at the first out sample of its run and keeps its peak
    ev = AnomalyDetector("y")
    opened = [e for i, y in enumerate([100, 300, 320, 500]) for e in ev.sample(float(i), y, BAND)]
    assert opened[0].start == 1.0 and ev.open is not None and ev.open.peak == 500


def test_one_spike_is_no_event_and_small_deviations_never_are() -> None:
    """A single out sample, or a deviation under min_delta / min_ratio, opens nothing."""
    assert run(AnomalyDetector("x"), [100, 400, 100, 400, 100]) == []
    small = Band(2.0, 1.0, 3.0)
    assert run(AnomalyDetector("x"), [6.0] * 10, small) == []  # 4 over the point: under min_delta 5


def test_silence_and_drop() -> None:
    """Below the interval at about nothing is ``silent``; merely low is ``drop``."""
    assert run(AnomalyDetector("x"), [0, 0])[0][1] == SILENT
    assert run(AnomalyDetector("x"), [40, 40])[0][1] == DROP


def test_side_change_closes_and_opens() -> None:
    """A surge followed at once by silence: the surge closes, the silence opens."""
    events = run(AnomalyDetector("x"), [300, 300, 0, 0])
    assert [(k, o) for _, k, o in events] == [(SURGE, True), (SURGE, False), (SILENT, True)]


def test_log_fields_fill_the_format_strings() -> None:
    """The constant log formats take the event's fields."""
    det = AnomalyDetector("partition t/0")
    run(det, [300, 300])
    assert det.open is not None
    assert "surge on partition t/0" in LOG_OPEN.format(**det.open.log_fields())
    det.open.end = 30.0
    assert "lasted" in LOG_CLOSE.format(**det.open.log_fields())


def test_config_is_validated() -> None:
    """enter/leave below 1 are refused."""
    with pytest.raises(ValueError):
        AnomalyConfig(enter=0)


def views(rates: dict[str, dict[tuple[str, int], float]]) -> list[dict[str, object]]:
    return [
        {
            "id": n,
            "state": "alive",
            "partition_rates": [
                {"topic": t, "partition": p, "msgs_s": m, "bytes_s": 0.0} for (t, p), m in r.items()
            ],
        }
        for n, r in rates.items()
    ]


def test_forecaster_learns_from_gossip_and_flags_a_surge() -> None:
    """Partition, node and topic series from member views; a 5x surge on one
    partition is one surge event on it (the node's series is not watched)."""
    fc = TrafficForecaster(ForecastConfig(bucket=10.0, seasons=(), warmup=3), horizon=60.0)
    rng = random.Random(5)
    t = 0.0
    for _ in range(300):
        fc.observe_gossip(t, views({"a": {("t", 0): 100 * (1 + rng.gauss(0, 0.02))}, "b": {("t", 1): 50.0}}))
        t += 5.0
    assert {partition_key("t", 0), partition_key("t", 1), node_key("a"), topic_key("t")} <= set(fc.keys())
    f = fc.partition_forecasts(t)
    assert f[("t", 0)] == pytest.approx(100.0, rel=0.1) and f[("t", 1)] == pytest.approx(50.0, rel=0.1)
    assert fc.anomalies_total == {}
    for _ in range(4):
        fc.observe_gossip(t, views({"a": {("t", 0): 500.0}, "b": {("t", 1): 50.0}}))
        t += 5.0
    opened = [a for a in fc.open_anomalies() if a.kind == SURGE]
    assert [a.series for a in opened] == ["partition t/0", "topic t publish"]


def test_forecaster_is_bounded() -> None:
    """At most max_series series (oldest dropped) and max_anomalies events."""
    fc = TrafficForecaster(max_series=3, max_anomalies=2)
    for i in range(10):
        fc.observe(float(i), partition_key("t", i), 1.0)
    assert len(fc.keys()) == 3 and fc.evicted == 7
    assert fc.anomalies.maxlen == 2
    with pytest.raises(ValueError):
        TrafficForecaster(max_series=0)


def test_counters_become_rates() -> None:
    """Counter totals become per-second samples; a counter going backwards restarts."""
    fc = TrafficForecaster(ForecastConfig(bucket=10.0, seasons=(), warmup=2))
    total = 0.0
    for i in range(60):
        total += 50.0
        fc.observe_counters(i * 5.0, "deliver", {"t": total})
    last = fc.last(topic_key("t", "deliver"))
    assert last is not None and last[1] == pytest.approx(10.0)
    fc.observe_counters(300.0, "deliver", {"t": 0.0})
    assert fc.last(topic_key("t", "deliver")) == last


def test_an_open_anomaly_is_not_learnt_into_the_season() -> None:
    """With ``hold_seasons``, while a partition's anomaly is open its samples
    do not teach the seasonal model (``AnomalyDetector.unusual``): after a
    surge in the first season, the forecast for the same time one season
    later is the normal rate, not a ghost of the surge (without it: 500)."""
    key = partition_key("t", 0)
    fc = TrafficForecaster(ForecastConfig(bucket=10.0, seasons=(60,), warmup=3), hold_seasons=True)
    unusual = []
    for i in range(850 // 5):  # the first season (600 s) has a surge at 300-360 s
        t = i * 5.0
        fc.observe(t, key, 500.0 if 300.0 <= t < 360.0 else 100.0)
        unusual.append(fc._series[key].detector.unusual)
    assert any(unusual) and not unusual[-1]
    assert [a.kind for a in fc.anomalies] == [SURGE]
    for at in (910.0, 930.0, 950.0):  # the surge's time, one season later (learnt: 500)
        band = fc.forecast(key, at)
        assert band is not None and band.point == pytest.approx(100.0, rel=0.2)


def test_by_default_a_surge_is_learnt_into_the_season() -> None:
    """Without ``hold_seasons`` (the default) a surge in the first season is
    forecast again one season later (a daily batch job is real traffic)."""
    key = partition_key("t", 0)
    fc = TrafficForecaster(ForecastConfig(bucket=10.0, seasons=(60,), warmup=3))
    for i in range(850 // 5):
        t = i * 5.0
        fc.observe(t, key, 500.0 if 300.0 <= t < 360.0 else 100.0)
    band = fc.forecast(key, 930.0)
    assert band is not None and band.point > 400.0
