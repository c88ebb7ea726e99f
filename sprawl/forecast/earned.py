"""The *earned trust* settings of predictive balancing (issue 18), in one place.

Both the simulator's ``--earned`` run (:func:`sprawl.forecast.replay.earned`)
and a real node with ``--earned-trust`` (:func:`sprawl.node.binding.make_traffic_feed`,
:class:`sprawl.forecast.feed.TrafficFeed`) take their values from
:func:`earned_trust`, so the two cannot drift apart: the forecaster withholds
forecasts for one season after a surprise
(``TrafficForecaster(distrust=...)``) -- per partition: only the surprised
partition's short forecasts are withheld, its profile and every other
partition's forecasts still reach the balancer (``distrust_partition``,
``distrust_profiles``; trust40, earned trust's value since trust43) --, the
balancer gets each partition's
profile over one season, recomputed once a minute
(:meth:`~sprawl.forecast.traffic.TrafficForecaster.partition_profiles`), and
sheds on a forecast only a node predicted over the bound at half of its
profile's points or more (``BalanceConfig.predict_lasting``).  Measured in
docs/benchmarks.md, "Predictive balancing: earned trust (issue 18, planner6)",
and across seeds and ``predict_lasting`` 0.3-0.7 in "Earned trust: profiles
off the reactor, and how stable its wins are (issue 18, trust35)"; judged
per family over many draws against the reactive balancer in "Surges judged
on 32 draws, and the bar as non-inferiority (issue 18, trust42)" and "Surges
on 32 fresh draws: the pre-registered confirmatory look (issue 18, trust43)":
on surges it missed issue 18's bar (:meth:`benchmarks.paired.Aggregate.holds`)
over seeds 1-16 by 1.5 moves (+2.1 % against the 2 % margin), then held it on
the 32 fresh draws of seeds 17-32 (moves 1,312 against 1,312, 57 % less hot)
and over all 64 draws pooled (+1.1 % moves, 61 % less hot), the lead's
pre-registered condition; hourly, ramp, daily and recorded meet both bars
with it as with the cluster-wide gate it replaced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sprawl.cluster.balance import BalanceConfig

#: A node sheds on a forecast only when predicted over the bound at this share
#: of its profile's points or more (``BalanceConfig.predict_lasting``).
EARNED_LASTING = 0.5
#: Points of each partition's profile.
PROFILE_POINTS = 24
#: Seconds between two computations of the profiles (not one per decision:
#: they cost a forecast per point per partition).
PROFILE_EVERY = 60.0

__all__ = ["EARNED_LASTING", "PROFILE_EVERY", "PROFILE_POINTS", "EarnedTrust", "earned_trust"]


@dataclass(frozen=True)
class EarnedTrust:
    """The earned-trust values for a model whose longest season is ``season`` seconds."""

    #: ``TrafficForecaster(distrust=...)``: seconds without forecasts after a surprise.
    distrust: float
    #: Seconds each partition's profile covers.
    profile_horizon: float
    profile_points: int = PROFILE_POINTS
    profile_every: float = PROFILE_EVERY
    #: ``BalanceConfig.predict_lasting``.
    lasting: float = EARNED_LASTING
    #: ``TrafficForecaster(distrust_partition=...)``: a surprise withholds only
    #: the surprised partition's forecasts, not every partition's.  With the
    #: cluster-wide gate (False: earned trust until trust43) the first surge
    #: of the surges trace withheld every forecast for a day: a tie with the
    #: reactive balancer, not a win (docs/benchmarks.md, trust39-trust43).
    distrust_partition: bool = True
    #: ``TrafficForecaster(distrust_profiles=...)``: with
    #: :attr:`distrust_partition`, whether the surprised partition's profile
    #: is withheld too (True) or only its short forecasts (False: its seasonal
    #: shape still reaches the balancer, instead of its present load held flat
    #: for a season; trust40's best form).
    distrust_profiles: bool = False

    def balance(self, config: BalanceConfig | None = None) -> BalanceConfig:
        """``config`` (default: the defaults) with the earned-trust balancer values."""
        return dataclasses.replace(config or BalanceConfig(), predict_lasting=self.lasting)


def earned_trust(season: float) -> EarnedTrust:
    """The earned-trust values for a model whose longest season is ``season`` seconds
    (distrust and profiles over one season)."""
    if season <= 0:
        raise ValueError("earned trust needs a season (a model with none has nothing to earn)")
    return EarnedTrust(distrust=season, profile_horizon=season)
