"""Load-based balancing of partition leadership (design decision 3).  Pure.

The controller calls :meth:`Balancer.decide` every few seconds with a view of
the cluster -- every partition's leader, replicas and publish rate measured at
its leader (from gossip, see :mod:`sprawl.gossip.load`) and the live nodes --
and gets back at most ``max_moves`` leadership moves, each to a replica of
the partition (so a move never copies data: it is a failover to a chosen
replica, :meth:`sprawl.replication.failover.FailoverCore.move_leader`).

Load.  A partition's load is ``msgs_s + bytes_s / bytes_per_unit`` "units"
per second (by default a message costs as much as a KiB of payload); a node's
load is the sum over the partitions it leads.  ``mean`` is the average over
the live nodes and ``upper = mean * (1 + threshold)``.

Rules (each has a unit test in ``tests/unit/cluster/test_balance.py``):

* a node is *hot* when its load is above ``upper`` AND at least ``min_load``
  (an idle or lightly loaded cluster never moves anything);
* a hot node sheds only once it has been hot for ``persist`` consecutive
  decisions (hysteresis), and after it shed its count starts again from 0
  (the gossiped rates lag behind a move by a sample or two);
* a partition moves only to a live replica of it that is below ``mean`` and
  stays at or below ``upper`` once it has the partition; the least loaded
  such replica is taken;
* a partition that moved is not moved again for ``cooldown`` seconds;
* a partition doing less than ``min_partition_load`` is never moved, nor one
  the controller marks not movable (a failover or replica move under way);
* at most ``max_moves - in_flight`` moves per decision;
* a *stuck* node -- hot for ``unstick_after`` decisions (30) with no single
  move above that fits, over the bound by ``unstick_margin`` (a quarter) of
  the band between the mean and the bound -- gets a *relief plan*
  (reason :data:`PLANNED`): the shortest sequence of up to
  ``unstick_moves`` (3) leadership moves, each to a replica of its partition,
  that leaves it and every node the plan touches at or below ``upper``,
  loads no other node above ``upper`` on the way, and lowers the sum of
  squared node loads by more than ``min_partition_load`` squared; of those,
  the least load moved (:func:`sprawl.cluster.relief.search`, a bounded
  search over every such sequence).  With forecasts the node must still be
  predicted hot and the plan must leave the nodes it touches at or below
  the predicted bound (its benefit outlasts the moves).  The plan is made
  over as many decisions as ``max_moves`` needs, each move checked again
  before it is made (a move that no longer fits drops the rest), and takes
  whole decisions while under way; :func:`replica_move` leaves its node
  alone (:attr:`Decision.planned`).  Tests in
  ``tests/unit/cluster/test_balance_relief.py``.

Why there is no flapping: under a steady load the mean and ``upper`` do not
change; a move takes load off a node above ``upper`` and never puts a node
above ``upper``, so the total excess ``sum(max(0, load - upper))`` strictly
falls with each move and no assignment of leaders can come back -- in
particular no partition moves back and forth.  (``tests/unit/cluster/test_balance.py``
checks this with hypothesis.)

Rates right after a move: until the new leader gossips the partition's rate
(``None`` in the view), the balancer keeps counting the rate it moved, for
``cooldown`` seconds, so the new leader does not look idle.

Predictive moves.  A partition may carry a *forecast* of its load (the
highest the controller's :class:`sprawl.forecast.traffic.TrafficForecaster`
predicts over the next few minutes).  From the forecasts (the present load
where a partition has none) the balancer computes each node's *predicted*
load with this decision's reactive moves applied, their mean and bound; a
node *predicted hot* for ``persist`` decisions in a row sheds before it gets
hot, under every reactive rule plus these:

* the partition moves only in a quiet moment: its present load is above 0
  and at most its forecast (moving it now costs no more than later);
* the target is below the mean and stays at or below the bound both now and
  as predicted;
* the source carries more present load than the target by at least the
  partition's present load plus ``min_partition_load``, so the move lowers
  the sum of squared present node loads by a margin (not by float noise: a
  move that merely swaps two nodes' loads could swap back after the
  cooldown);
* a node that shed reactively in this decision does not also shed on the
  forecast, and a partition moved (for any reason) within
  ``predict_cooldown`` does not move on a forecast; moves share ``max_moves`` and the cooldown with reactive ones
  and carry the reason :data:`PREDICTED`.

Why a wrong forecast cannot make it flap: every move, reactive or predictive,
lowers ``sum(load^2)`` over the nodes' *present* loads by ``2 * u * (src - dst
- u) > 0`` (a reactive move has ``src > upper >= dst + u``), whatever the
forecasts say.  Under a steady present load that sum only falls, so no
assignment of leaders comes back and the moves stop; forecasts pick *which*
of these improving moves is made and *when*, never a move that makes the
present worse.  (``tests/unit/cluster/test_balance_predictive.py`` checks this with
hypothesis, forecasts drawn at random every decision.)

Options, all off by default (measured in docs/benchmarks.md, "Predictive
balancing": none keeps the hot-time win with no more moves than the reactive
balancer on every trace; they stay so the rows can be reproduced, each with a
unit test in ``tests/unit/cluster/test_balance_plan.py``):

* *profiles* (:attr:`PartitionLoad.profile`, the forecast over the next
  hours): a move on a forecast must lower the nodes' predicted excess over
  the bound summed over the profile's points (the short forecast first), and
  the one that lowers it most is made -- a move that helps the next minutes
  but makes its target hot later in the day is not;
* ``chain_after``: a node hot for that many decisions that no single move
  relieves gets a two-move plan (reason :data:`PLANNED`): a partition of a
  replica moves to a node below the mean (or to the hot node: a swap) to make
  room for one of the hot node's partitions; the plan as a whole lowers the
  sum of squared present loads and leaves no node it loads above the bound;
* ``predict_hold``: after a decision that moved on a forecast, no move on a
  forecast anywhere for that many seconds -- but for a node predicted over
  the bound at a quarter or more of its profile's points (a lasting rise);
* ``predict_quiet``: moves on a forecast only while no node is hot and no
  move is made or under way;
* ``predict_veto``: a node hot now whose forecast load is at or below the
  forecast bound (a surge the forecaster takes as passing:
  :attr:`sprawl.forecast.traffic.TrafficForecaster.surge_guard`) does not shed;
* ``plan_after``: a node hot for that many decisions that no single move
  relieves, over the bound by ``plan_margin`` of the band now and at
  ``plan_lasting`` or more of its profile's points (a lasting rise, not a
  node hovering at the bound), gets a plan of up to ``plan_moves`` moves
  (reason :data:`PLANNED`): partitions off one of its replicas to nodes below
  the mean until one of its partitions fits there, then that one.  The plan
  is made over as many decisions as ``max_moves`` needs (:attr:`Balancer.plan`
  holds the rest), each move checked again against that decision's loads
  before it is made (a move that no longer fits drops the rest), and while
  it is under way it takes the whole decision (the controller's
  :func:`replica_move` aside; tests in
  ``tests/unit/cluster/test_balance_multiplan.py``).

* ``predict_replace``: a move on a forecast only where it replaces a
  reactive one -- the reactive rule, replayed on the forecast loads along the
  partitions' paths over the horizon (:attr:`PartitionLoad.path`; without
  them on the highest forecasts), would itself move off that node within the
  horizon; ``"cap"`` makes no more moves than the replay, ``"same"`` makes
  the replayed moves themselves (where they are quiet moves now); the node's
  hot streak starts again from 0 as after a reactive shed, and for
  ``replace_within`` seconds the node's later moves count as pre-empted
  (held, :attr:`Balancer.preempted_total`) while its load stays at or below
  what the forecast gave it (tests in
  ``tests/unit/cluster/test_balance_replace.py``).

* forecast-guided choice in every move, reactive ones included (with
  forecasts; ``predict`` may be off for the reactive rule with the choices):
  ``choose_target`` sends a move to the eligible replica whose load with the
  partition stays furthest below the predicted bound now and along the
  partitions' paths (:attr:`PartitionLoad.path`; the highest forecast
  without), not merely the least loaded now; ``choose_partition`` sheds the
  partition whose move leaves the node least over the bound now and along
  the paths (the longest-lasting relief next), not merely its largest now --
  in the reactive shed and the predictive pass alike; ``shed_skip`` skips a
  reactive shed when the node is at or below the bound at every path point
  after the first ``shed_skip`` (its excess ends before a move would pay;
  :attr:`Decision.skipped`, left alone by :func:`replica_move` too).  Tests in
  ``tests/unit/cluster/test_balance_guided.py``.

* a move budget (``Balancer.decide(predict_allowance=...)``, from a shadow
  run of the reactive rule: :mod:`sprawl.forecast.budget`): the moves a
  decision may make in all before it stops making moves on a forecast; its
  reactive moves count against it but are never held by it (a node truly hot
  is relieved).  ``predict_choose`` makes, of the forecast moves off a node,
  the one that removes the most predicted excess over the bound (source and
  target, now and along the paths), and none that removes nothing -- for a
  scarce budget.  Tests in ``tests/unit/cluster/test_balance_budget.py``.

* ``predict_margin``: a node counts as predicted hot only when over the
  predicted bound by that share of the band (pmean to the bound);
  ``predict_persist``: decisions predicted hot before a shed on the
  forecast (instead of ``persist``); ``predict_lasting`` (with profiles): a
  node sheds on the forecast only when predicted over the bound at that
  share or more of its profile's points -- a lasting rise, not a node
  hovering at the bound.  Tests in ``tests/unit/cluster/test_balance_predictive.py``
  and ``tests/unit/cluster/test_balance_plan.py``; ``predict_lasting=0.5``
  with one season's profiles and the forecaster's ``distrust`` is the
  *earned trust* combination (:func:`sprawl.forecast.replay.earned`).

* ``predict_again``: a partition moved on a forecast does not move on a
  forecast again for that many seconds (reactive moves and relief plans
  are not held by it): at most one move on a forecast per partition per,
  say, a season, so a balanced placement is not moved round and round on
  forecasts as the day shifts the loads under it.  With one season on the
  earned-trust combination it wins some draws of the traces and loses
  others (docs/benchmarks.md, forecast37): not part of it.  It only
  withholds moves.  Tests in ``tests/unit/cluster/test_balance_predictive.py``.

* ``early_shed`` (with paths; ``predict`` may be off): a node hot now sheds
  after that many hot decisions instead of ``persist`` when the forecast
  says its heat lasts -- over the predicted bound by ``early_margin`` of the
  band at each of the first ``early_points`` points of the partitions' paths.
  The shed is the reactive rule's own (:meth:`Balancer._shed`: the same
  partitions to the same targets, the streak reset after it), made sooner,
  with the reason :data:`PREDICTED`: issue 18's "a forecast move only as an
  early version of the reactive move it replaces" in its narrowest form.
  Measured in docs/benchmarks.md (trust38): moving the same move 20 s
  earlier changes which 5-second sample the gossip's 20% rule holds in the
  view, and the runs part from there; it wins some draws and loses others,
  as the reactive rule against itself with its clock shifted by 5 s does.
  Tests in ``tests/unit/forecast/test_forecast_early_shed.py``.

The no-flapping argument holds with all of them, and with the relief plans
(the choices pick among the same improving moves, or skip one): a relief plan
lowers ``sum(load^2)`` as a whole once done, every move of it lands on a node
that stays at or below ``upper`` (or on the stuck node itself, a swap), and
under a steady load each of its later moves passes its check again, so it is
done before anything else moves; a two-move plan lowers
``sum(load^2)`` as a whole within one decision; a multi-decision plan lowers
it as a whole once done, and since nothing else moves while it is under way,
under a steady load each of its moves passes its check and it is done (its
room-making moves alone may raise the sum); the others only withhold moves
-- the move budget too: it only removes moves on a forecast, every move it
lets through is one the balancer would have made without it, so it cannot
add flapping (``test_random_allowances_cannot_make_it_flap`` draws the
allowance at random every decision).

Replica moves (moving a replica off a persistently hot node) are not done
here: leadership moves inside the replica set cover the common case without
copying data.

How the controller uses it (``tests/unit/cluster/test_balance.py`` runs this loop on
pure cores)::

    balancer = Balancer(BalanceConfig())          # NodeMetrics.balancer = balancer
    # each controller tick, with now, live node ids, the applied placement:
    if balancer.due(now):
        rates = rates_by_node(membership.member_views())   # sprawl.gossip.load
        parts = partitions_from(placement, rates,
                                lambda k: k in controllers and not controllers[k].busy
                                and controllers[k].leader_confirmed)
        in_flight = sum(1 for c in controllers.values() if c.moving_to is not None)
        for mv in balancer.decide(now, parts, live, in_flight).moves:
            out = controllers[(mv.topic, mv.partition)].move_leader(mv.dst)
            if out is not None:
                send(out)                         # as any FailoverCore output

The "why" view: :attr:`Balancer.last` (a :class:`Decision`; ``as_dict()``
for ``GET /v1/cluster``) holds the last decision's per-node loads, mean,
``upper``, streaks, the moves and the reasons hot nodes did not shed;
:attr:`Balancer.moves_total` counts moves by reason for the metrics.

Why one module of about 600 lines: it is one pure decision.  The reactive
and predictive rules share the same node loads, mean, bound, streaks and
cooldowns within one :meth:`Balancer.decide`, and the no-flapping argument
above holds only for them together; the inputs (:func:`partitions_from`) and
the one other decision (:func:`replica_move`) sit beside it because they
speak its types, and the rate figures already live apart
(:mod:`sprawl.gossip.load`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, NamedTuple

from sprawl.cluster import relief

#: The reason a move off a node hot now carries (a metrics label).
OVERLOADED = "overloaded"
#: The reason a move off a node predicted to run hot carries.
PREDICTED = "predicted"
#: The reason the moves of a plan for a stuck hot node carry (a relief plan,
#: ``unstick_after``; the options ``chain_after`` and ``plan_after``).
PLANNED = "planned"


@dataclass(frozen=True)
class BalanceConfig:
    """Tuning; the defaults suit a decision every ~10 s."""

    #: A node is hot above ``mean * (1 + threshold)``.
    threshold: float = 0.25
    #: ... and at ``min_load`` units/s or more.
    min_load: float = 100.0
    #: Consecutive hot decisions before a node sheds.
    persist: int = 3
    #: Seconds before a moved partition may move again.
    cooldown: float = 300.0
    #: Moves per decision, in flight ones included.
    max_moves: int = 2
    #: Bytes/s that count as one unit (one message/s is one unit).
    bytes_per_unit: float = 1024.0
    #: Partitions doing less than this (units/s) never move.
    min_partition_load: float = 1.0
    #: Seconds between decisions (:meth:`Balancer.due`); gossip samples load every 5 s.
    interval: float = 10.0
    #: Act on partitions' forecasts (when the controller gives them).
    predict: bool = True
    #: A move made on a forecast keeps its target below ``mean * (1 +
    #: threshold * predict_room)``, now and as predicted (1: up to the bound).
    predict_room: float = 0.5
    #: Seconds after any move of a partition before it may move again on a
    #: forecast (a forecast is a weaker reason to move than a hot node).
    predict_cooldown: float = 3600.0
    #: A node hot now that no single move relieves gets a two-move plan (a
    #: swap, or a partition moved off a replica to make room for one of its
    #: own) once it has been hot this many decisions (0: never).  Part of the
    #: predictive pass: only with forecasts.
    chain_after: int = 0
    #: Seconds after a decision that made moves on a forecast during which no
    #: other move is made on one, anywhere (0: none), but off a node whose
    #: profile has it over the bound at a quarter or more of its points.
    predict_hold: float = 0.0
    #: The share of a node's profile points over the bound that waives
    #: ``predict_hold`` for it (above 1: never waived).
    hold_waiver: float = 0.25
    #: Moves on a forecast only in a quiet moment of the whole cluster: no
    #: node hot now, no move made or under way.
    predict_quiet: bool = False
    #: A node hot now whose forecast load (every partition's, the present
    #: standing in where there is none) is at or below the forecast bound
    #: does not shed: the forecast says its heat passes (a surge).
    predict_veto: bool = False
    #: A node hot now for this many decisions that no single move relieves,
    #: and over the bound at ``plan_lasting`` or more of its profile's points
    #: as well (a lasting rise, not a node hovering at the bound), gets a plan
    #: of up to ``plan_moves`` moves (reason :data:`PLANNED`) made over as
    #: many decisions as the move budget needs, each move checked again
    #: before it is made (0: never).  Part of the predictive pass: only with
    #: forecasts and profiles.
    plan_after: int = 0
    #: The share of a node's profile points over the bound a plan needs.
    plan_lasting: float = 0.5
    #: Moves in a plan, the last one off the hot node included.
    plan_moves: int = 3
    #: How far over the bound (a share of the band between the mean and the
    #: bound) a node's present load must be for a plan, and a profile point
    #: to count for ``plan_lasting``: a node hovering at the bound is not over
    #: it by much (and before a season is learnt its profile is flat: the
    #: present level, carried forward).
    plan_margin: float = 0.5
    #: Moves on a forecast only where they replace reactive ones: the reactive
    #: rule replayed on the forecast loads (:meth:`Balancer._replay`) would move
    #: off that node within the horizon; at most as many moves as the replay
    #: makes, and for ``replace_within`` seconds after, the node's reactive
    #: moves count as pre-empted (held).  ``"cap"``: the forecast pass picks
    #: its moves as usual; ``"same"``: the replayed moves themselves, made
    #: now where they fit now.  ``""``: off.
    predict_replace: str = ""
    #: Seconds a move on a forecast pre-empts its node's reactive moves
    #: (``predict_replace``; the forecast's horizon).
    replace_within: float = 900.0
    #: Consecutive points of the paths at which the replayed node must be hot
    #: before the replayed rule moves (``predict_replace``; the reactive rule's
    #: ``persist``, in path points).
    replace_points: int = 1
    #: Every move (reactive ones too) goes to the eligible replica whose
    #: predicted load with the partition stays lowest against the predicted
    #: bound over the partitions' paths (the highest forecasts without them),
    #: not merely the least loaded now.  Only with forecasts; ``predict`` may
    #: be off (forecast-guided choice without moves on a forecast).
    choose_target: bool = False
    #: A hot node sheds the partition whose move leaves it least over the
    #: bound, now and along the paths (summed), the longest-lasting relief
    #: next, not merely its largest now: a partition about to fall relieves
    #: it for less than one about to rise.  Only with forecasts.
    choose_partition: bool = False
    #: A node hot now does not shed when along its path it is at or below the
    #: predicted bound at every point after the first ``shed_skip`` (its
    #: excess ends before a move would pay; 0: never skipped).  Only with paths.
    shed_skip: int = 0
    #: The pass on a forecast makes, of the moves it may make off a node, the
    #: one that removes the most predicted excess over the bound (the source's
    #: and the target's, now and along the partitions' paths, summed), and only
    #: a move that removes some: for a scarce move budget
    #: (:class:`sprawl.forecast.budget.MoveBudget`).  Only with forecasts.
    predict_choose: bool = False
    #: A node is predicted hot only when its predicted load is over the
    #: predicted bound by this share of the band between the predicted mean and
    #: the bound (0: over the bound at all): a forecast just over the bound
    #: is within the forecast's own error.
    predict_margin: float = 0.0
    #: Consecutive decisions a node must be predicted hot before it sheds on
    #: the forecast (0: ``persist``, as a node hot now).
    predict_persist: int = 0
    #: With profiles: a node sheds on the forecast only when it is predicted
    #: over the bound at this share or more of its profile's points (a lasting
    #: rise, not a node hovering at the bound; 0: any).
    predict_lasting: float = 0.0
    #: A node hot for this many decisions in a row that no single move the
    #: reactive rule may make relieves (*stuck*) gets the shortest plan of up to
    #: ``unstick_moves`` leadership moves that relieves it
    #: (:func:`sprawl.cluster.relief.search`, reason :data:`PLANNED`), made over
    #: as many decisions as the move budget needs, each move checked again
    #: before it is made (0: never).  With forecasts, only for a node still
    #: predicted hot, and the plan must leave the nodes it loads at or below
    #: the predicted bound too.  The reactive and the predictive balancer alike.
    unstick_after: int = 30
    #: How far over the bound (a share of the band between the mean and the
    #: bound) a stuck node must be for a plan: a node hovering at the bound
    #: is not stuck, its heat passes with the noise.
    unstick_margin: float = 0.25
    #: Moves in a plan for a stuck node, the last one off it included.
    unstick_moves: int = 3
    #: How far under the bound (a share of the band) a plan must leave every
    #: node it touches: a plan spread over two decisions is checked again
    #: before its last move, and a node left just under the bound fails that
    #: check with the next sample's noise (its first moves then wasted).
    unstick_slack: float = 0.0
    #: Seconds after a partition moved *on a forecast* before it may move on a
    #: forecast again (0: ``predict_cooldown`` alone): at most one move on a
    #: forecast per partition per that many seconds (measured at a season with
    #: earned trust: docs/benchmarks.md, forecast37).
    predict_again: float = 0.0
    #: A node hot now sheds once it has been hot this many decisions instead
    #: of ``persist`` when the forecast confirms its heat lasts: along the
    #: partitions' paths (:attr:`PartitionLoad.path`, the present load where a
    #: partition has none) it stays over the predicted bound by
    #: ``early_margin`` of the band at each of the first ``early_points``
    #: points (0: all).  The shed is the reactive rule's own (:meth:`_shed`:
    #: the same partitions to the same targets, the node's streak reset after
    #: it), only sooner, with the reason :data:`PREDICTED`: the forecast
    #: stands in for the hysteresis and adds no move of its own (0: never).
    #: Works with ``predict`` off (no move on a forecast but these).
    early_shed: int = 0
    early_margin: float = 0.25
    early_points: int = 0

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.persist < 1 or self.max_moves < 0:
            raise ValueError("need threshold > 0, persist >= 1, max_moves >= 0")
        if self.cooldown < 0 or self.min_load < 0 or self.bytes_per_unit <= 0:
            raise ValueError("need cooldown >= 0, min_load >= 0, bytes_per_unit > 0")
        if self.plan_after < 0 or self.plan_moves < 2:
            raise ValueError("need plan_after >= 0, plan_moves >= 2")
        if self.predict_again < 0:
            raise ValueError("need predict_again >= 0")
        if self.early_shed < 0 or self.early_margin < 0 or self.early_points < 0:
            raise ValueError("need early_shed >= 0, early_margin >= 0, early_points >= 0")
        if self.unstick_after < 0 or self.unstick_moves < 1 or self.unstick_margin < 0:
            raise ValueError("need unstick_after >= 0, unstick_moves >= 1, unstick_margin >= 0")
        if (
            self.predict_replace not in ("", "cap", "same")
            or self.replace_within < 0
            or self.replace_points < 1
            or self.shed_skip < 0
        ):
            raise ValueError(
                'need predict_replace in ("", "cap", "same"), replace_within >= 0, replace_points >= 1,'
                " shed_skip >= 0"
            )


@dataclass(frozen=True)
class PartitionLoad:
    """One partition as the controller sees it."""

    topic: str
    partition: int
    leader: str
    replicas: tuple[str, ...]
    #: Measured at the leader; None when the leader has not reported it.
    msgs_s: float | None = None
    bytes_s: float | None = None
    #: False while a failover or a replica change of it is under way.
    movable: bool = True
    #: Predicted load (units/s: the highest over the forecast horizon); None
    #: without a forecast (the present load stands in for it).
    forecast: float | None = None
    #: Predicted load at evenly spaced times over a longer horizon (hours:
    #: :meth:`sprawl.forecast.traffic.TrafficForecaster.partition_profiles`);
    #: a move on a forecast must lower the node's predicted excess over it.
    profile: tuple[float, ...] | None = None
    #: Predicted load at evenly spaced times over the forecast's horizon
    #: (:meth:`sprawl.forecast.traffic.TrafficForecaster.partition_paths`):
    #: what ``predict_replace`` replays the reactive rule on.
    path: tuple[float, ...] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


class Move(NamedTuple):
    """Move ``topic``/``partition``'s leadership from ``src`` to ``dst``."""

    topic: str
    partition: int
    src: str
    dst: str
    reason: str


@dataclass
class NodeLoad:
    """One live node in a decision."""

    #: Measured (units/s), before this decision's moves.
    load: float
    #: Expected once this decision's moves are done.
    projected: float
    msgs_s: float
    bytes_s: float
    leads: int
    #: ``load / mean`` (0 when the mean is 0).
    ratio: float
    hot: bool
    #: Consecutive decisions this node has been hot (after any shedding).
    streak: int
    #: Predicted load (forecasts, this decision's moves applied); None without forecasts.
    predicted: float | None = None
    #: Predicted above the predicted bound (and ``min_load``).
    predicted_hot: bool = False
    #: Consecutive decisions this node has been predicted hot (after any shedding).
    predicted_streak: int = 0


@dataclass
class Decision:
    """What one :meth:`Balancer.decide` saw and did (the "why" view)."""

    at: float
    mean: float
    upper: float
    threshold: float
    min_load: float
    persist: int
    nodes: dict[str, NodeLoad] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)
    #: Why hot nodes did not shed (or shed less), one line each.
    held: list[str] = field(default_factory=list)
    #: Mean and bound of the predicted loads (None without forecasts).
    predicted_mean: float | None = None
    predicted_upper: float | None = None
    #: Hot nodes whose moves were held as pre-empted by earlier moves on a
    #: forecast (``predict_replace``): :func:`replica_move` leaves them alone too.
    preempted: list[str] = field(default_factory=list)
    #: Hot nodes whose shed was skipped because their path falls to the bound
    #: soon (``shed_skip``): :func:`replica_move` leaves them alone too.
    skipped: list[str] = field(default_factory=list)
    #: Whether the move budget (``predict_allowance``) cut the moves this
    #: decision could make on a forecast.
    budgeted: bool = False
    #: Stuck hot nodes with a plan under way (``unstick_after``, ``plan_after``):
    #: :func:`replica_move` leaves them alone too.
    planned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``GET /v1/cluster`` (the ``predicted*`` fields only
        when partitions carried forecasts)."""
        out = {
            "at": self.at,
            "mean": round(self.mean, 3),
            "upper": round(self.upper, 3),
            "threshold": self.threshold,
            "min_load": self.min_load,
            "persist": self.persist,
            "nodes": {
                n: {
                    "load": round(v.load, 3),
                    "projected": round(v.projected, 3),
                    "msgs_s": round(v.msgs_s, 3),
                    "bytes_s": round(v.bytes_s, 3),
                    "leads": v.leads,
                    "ratio": round(v.ratio, 3),
                    "hot": v.hot,
                    "streak": v.streak,
                    **(
                        {}
                        if v.predicted is None
                        else {
                            "predicted": round(v.predicted, 3),
                            "predicted_hot": v.predicted_hot,
                            "predicted_streak": v.predicted_streak,
                        }
                    ),
                }
                for n, v in sorted(self.nodes.items())
            },
            "moves": [
                {"topic": m.topic, "partition": m.partition, "from": m.src, "to": m.dst, "reason": m.reason}
                for m in self.moves
            ],
            "held": list(self.held),
        }
        if self.predicted_mean is not None and self.predicted_upper is not None:
            out["predicted_mean"] = round(self.predicted_mean, 3)
            out["predicted_upper"] = round(self.predicted_upper, 3)
        return out


class Balancer:
    """Decides leadership moves; keeps the hysteresis and cooldown state."""

    def __init__(self, config: BalanceConfig | None = None) -> None:
        self.config = config or BalanceConfig()
        self._streak: dict[str, int] = {}
        self._pstreak: dict[str, int] = {}
        #: When the last decision that made moves on a forecast was.
        self._predicted_at = -math.inf
        #: key -> time of its last move (kept ``predict_cooldown``).
        self._last_move: dict[tuple[str, int], float] = {}
        #: key -> time of its last move on a forecast (kept ``predict_again``).
        self._last_predicted: dict[tuple[str, int], float] = {}
        #: key -> (time moved, load moved with it).
        self._moved: dict[tuple[str, int], tuple[float, float]] = {}
        #: The last decision (None before the first).
        self.last: Decision | None = None
        #: Moves made, by reason.
        self.moves_total: dict[str, int] = {}
        #: The rest of a multi-decision plan (``plan_after``), in order, and its hot node.
        self._plan: list[Move] = []
        self._plan_src = ""
        #: Whether the plan under way is a relief plan (``unstick_after``): its
        #: room-making moves may go to any node that stays at or below the bound.
        self._plan_relief = False
        #: node -> (until when its moves are pre-empted, the load predicted
        #: for it once the moves on a forecast were made) (``predict_replace``).
        self._preempted: dict[str, tuple[float, float]] = {}
        #: Nodes whose pre-emption has held back a reactive move (counted once each).
        self._preempt_used: set[str] = set()
        #: Reactive moves a move on a forecast pre-empted: nodes hot long enough
        #: to shed whose shedding a pre-emption held (once per pre-emption).
        self.preempted_total = 0

    @property
    def moved_loads(self) -> Mapping[tuple[str, int], tuple[float, float]]:
        """key -> (when it moved, the load it moved with): what a partition
        not yet reported by its new leader counts for (``cooldown`` seconds)."""
        return self._moved

    @property
    def plan(self) -> tuple[Move, ...]:
        """The moves of a plan under way (``plan_after``) not made yet."""
        return tuple(self._plan)

    def due(self, now: float) -> bool:
        """Whether a decision is due (``interval`` since the last one): call
        :meth:`decide` only then, so ``persist`` counts decisions, not ticks."""
        return self.last is None or now - self.last.at >= self.config.interval

    def _load(self, p: PartitionLoad, now: float) -> tuple[float, float, float]:
        c = self.config
        if p.msgs_s is None and p.bytes_s is None:
            moved = self._moved.get(p.key)
            if moved is not None and now - moved[0] < c.cooldown:
                return moved[1], 0.0, 0.0  # not reported by its new leader yet
            return 0.0, 0.0, 0.0
        m, b = max(0.0, p.msgs_s or 0.0), max(0.0, p.bytes_s or 0.0)
        return m + b / c.bytes_per_unit, m, b

    def decide(
        self,
        now: float,
        partitions: Iterable[PartitionLoad],
        live: Iterable[str],
        in_flight: int = 0,
        predict_allowance: int | None = None,
    ) -> Decision:
        """One decision: the moves to make now (``Decision.moves``) and why.

        ``partitions``: every partition with a leader; ``live``: the nodes
        that may lead (alive or suspect); ``in_flight``: leadership moves
        started earlier and not finished (they count against ``max_moves``);
        ``predict_allowance``: when given, the moves this decision may make in
        all before it stops making moves on a forecast (the tokens of
        :class:`sprawl.forecast.budget.MoveBudget` less its reserve): this
        decision's reactive moves count against it but are never held by it.
        """
        c = self.config
        nodes = sorted(set(live))
        parts = list(partitions)
        loads = dict.fromkeys(nodes, 0.0)
        msgs = dict.fromkeys(nodes, 0.0)
        byts = dict.fromkeys(nodes, 0.0)
        leads = dict.fromkeys(nodes, 0)
        pload: dict[tuple[str, int], float] = {}
        for p in parts:
            units, m, b = self._load(p, now)
            pload[p.key] = units
            if p.leader in loads:
                loads[p.leader] += units
                msgs[p.leader] += m
                byts[p.leader] += b
                leads[p.leader] += 1
        mean = sum(loads.values()) / len(nodes) if nodes else 0.0
        upper = mean * (1 + c.threshold)
        self._moved = {k: v for k, v in self._moved.items() if now - v[0] < c.cooldown}
        self._last_move = {k: t for k, t in self._last_move.items() if now - t < c.predict_cooldown}
        self._last_predicted = {k: t for k, t in self._last_predicted.items() if now - t < c.predict_again}
        self._preempted = {
            n: v for n, v in self._preempted.items() if v[0] > now and loads.get(n, 0.0) <= v[1]
        }
        self._preempt_used &= set(self._preempted)
        for streaks in (self._streak, self._pstreak):
            for n in list(streaks):
                if n not in loads:
                    del streaks[n]
        hot = {n for n in nodes if loads[n] > upper and loads[n] >= c.min_load}
        for n in nodes:
            self._streak[n] = self._streak.get(n, 0) + 1 if n in hot else 0
        d = Decision(now, mean, upper, c.threshold, c.min_load, c.persist)
        measured = dict(loads)
        budget = max(0, c.max_moves - in_flight)
        by_leader: dict[str, list[PartitionLoad]] = {}
        for p in parts:
            by_leader.setdefault(p.leader, []).append(p)
        passing = self._passing(parts, pload, nodes) if c.predict and c.predict_veto else set()
        by_key = {p.key: p for p in parts}
        if self._plan:
            budget -= self._follow(by_key, pload, loads, mean, upper, now, budget, d)
            if self._plan:
                budget = 0  # a plan under way takes the whole decision
        guide = self._guide(parts, pload, d, nodes)
        confirmed = self._confirmed(parts, pload, nodes, hot) if c.early_shed > 0 else set()
        for src in sorted(hot, key=lambda n: (-loads[n], n)):
            early = src in confirmed and c.early_shed <= self._streak[src] < c.persist
            if self._streak[src] < c.persist and not early:
                d.held.append(f"{src}: hot for {self._streak[src]}/{c.persist} decisions")
                continue
            if src in passing:
                d.held.append(f"{src}: hot now, forecast at or below the forecast bound (passing)")
                continue
            if src in self._preempted:
                d.held.append(f"{src}: hot, its reactive move pre-empted by a move on a forecast")
                d.preempted.append(src)
                if src not in self._preempt_used:
                    self._preempt_used.add(src)
                    self.preempted_total += 1
                continue
            if guide is not None and c.shed_skip > 0 and guide.passes(src, c.shed_skip):
                d.held.append(f"{src}: hot, at or below the bound along its path after {c.shed_skip} points")
                d.skipped.append(src)
                continue
            if budget <= 0:
                d.held.append(f"{src}: move budget used ({c.max_moves} per decision, {in_flight} in flight)")
                continue
            shed = self._shed(
                src,
                by_leader.get(src, []),
                pload,
                loads,
                mean,
                upper,
                now,
                budget,
                d,
                guide,
                PREDICTED if early else OVERLOADED,
            )
            budget -= len(shed)
            if shed:
                self._streak[src] = 0
        if c.unstick_after > 0 and not self._plan and budget > 0:
            held = {m.src for m in d.moves} | passing | set(d.preempted) | set(d.skipped)
            budget -= self._unstick(
                parts, by_key, pload, loads, mean, upper, nodes, hot, held, now, budget, d
            )
            if self._plan:
                budget = 0
        if c.predict and c.chain_after > 0 and any(p.forecast is not None for p in parts):
            stuck = {m.src for m in d.moves}
            for src in sorted(hot, key=lambda n: (-loads[n], n)):
                if budget < 2 or src in stuck or self._streak[src] < c.chain_after:
                    continue
                plan = self._chain(src, by_leader, pload, loads, mean, upper, now, d)
                budget -= len(plan)
                if plan:
                    self._streak[src] = 0
        if c.predict and c.plan_after > 0 and not self._plan and budget > 0:
            self._plan_stuck(parts, by_leader, by_key, pload, loads, mean, upper, nodes, hot, now, budget, d)
            budget = 0 if self._plan else max(0, c.max_moves - in_flight - len(d.moves))
        calm = not (c.predict_quiet and (hot or d.moves or in_flight))
        if predict_allowance is not None:
            allowed = max(0, predict_allowance - len(d.moves))
            if allowed < budget:
                budget = allowed
                d.budgeted = True
        pred = self._predict(parts, pload, loads, nodes, now, budget, d, calm) if c.predict else None
        if self._plan:
            d.planned.append(self._plan_src)
        for n in nodes:
            d.nodes[n] = NodeLoad(
                load=measured[n],
                projected=loads[n],
                msgs_s=msgs[n],
                bytes_s=byts[n],
                leads=leads[n],
                ratio=measured[n] / mean if mean > 0 else 0.0,
                hot=n in hot,
                streak=self._streak[n],
                predicted=None if pred is None else pred[0][n],
                predicted_hot=pred is not None and n in pred[1],
                predicted_streak=self._pstreak.get(n, 0),
            )
        self.last = d
        return d

    def _guide(
        self,
        parts: Sequence[PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        d: Decision,
        nodes: Sequence[str],
    ) -> _Ahead | None:
        """The view the forecast-guided choices (``choose_target``,
        ``choose_partition``, ``shed_skip``) pick by, this decision's moves so
        far applied; None when they are off or no partition carries a forecast."""
        c = self.config
        if not (c.choose_target or c.choose_partition or c.shed_skip > 0 or c.predict_choose):
            return None
        moved = {(m.topic, m.partition): m.dst for m in d.moves}
        return _Ahead.along(parts, pload, moved, nodes, c.threshold)

    def _confirmed(
        self,
        parts: Sequence[PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        nodes: Sequence[str],
        hot: set[str],
    ) -> set[str]:
        """The hot nodes whose heat the forecast says lasts (``early_shed``):
        over the predicted bound by ``early_margin`` of the band at each of
        the first ``early_points`` points of the partitions' paths (a
        partition without a path: its present load at every point).  None
        without paths."""
        c = self.config
        width = max((len(p.path) for p in parts if p.path), default=0)
        if width == 0 or not hot:
            return set()
        rows = {n: [0.0] * width for n in nodes}
        for p in parts:
            row = rows.get(p.leader)
            if row is None:
                continue
            u = pload[p.key]
            path = p.path if p.path and len(p.path) == width else (u,) * width
            for i, x in enumerate(path):
                row[i] += max(0.0, x) if math.isfinite(x) else u
        points = range(min(width, c.early_points) if c.early_points else width)
        out = set()
        for n in sorted(hot):
            ok = True
            for i in points:
                mean = sum(rows[m][i] for m in nodes) / len(nodes)
                bound = mean * (1 + c.threshold)
                if rows[n][i] <= bound + c.early_margin * (bound - mean) or rows[n][i] < c.min_load:
                    ok = False
                    break
            if ok:
                out.add(n)
        return out

    def _passing(
        self, parts: Sequence[PartitionLoad], pload: Mapping[tuple[str, int], float], nodes: Sequence[str]
    ) -> set[str]:
        """Nodes whose forecast load is at or below the forecast bound (none
        without forecasts)."""
        if not nodes or not any(p.forecast is not None for p in parts):
            return set()
        pred = dict.fromkeys(nodes, 0.0)
        for p in parts:
            if p.leader in pred:
                f = p.forecast
                pred[p.leader] += pload[p.key] if f is None or not math.isfinite(f) else max(0.0, f)
        bound = sum(pred.values()) / len(nodes) * (1 + self.config.threshold)
        return {n for n in nodes if pred[n] <= bound}

    def _predict(
        self,
        parts: Sequence[PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        nodes: Sequence[str],
        now: float,
        budget: int,
        d: Decision,
        calm: bool = True,
    ) -> tuple[dict[str, float], set[str]] | None:
        """The predictive pass (see the module docstring): predicted node
        loads and the nodes predicted hot, after shedding what may be shed;
        None when no partition carries a forecast."""
        if not any(p.forecast is not None for p in parts):
            self._pstreak.clear()
            return None
        c = self.config
        moved = {(m.topic, m.partition): m.dst for m in d.moves}
        shed_now = {m.src for m in d.moves}
        fc: dict[tuple[str, int], float] = {}
        pred = dict.fromkeys(nodes, 0.0)
        by_leader: dict[str, list[PartitionLoad]] = {}
        for p in parts:
            f = pload[p.key] if p.forecast is None or not math.isfinite(p.forecast) else max(0.0, p.forecast)
            fc[p.key] = f
            leader = moved.get(p.key, p.leader)
            if leader in pred:
                pred[leader] += f
                by_leader.setdefault(leader, []).append(p)
        pmean = sum(pred.values()) / len(nodes) if nodes else 0.0
        pupper = pmean * (1 + c.threshold)
        d.predicted_mean, d.predicted_upper = pmean, pupper
        # predicted hot: over the bound by ``predict_margin`` of the band (pupper - pmean)
        pover = pupper + c.predict_margin * (pupper - pmean)
        phot = {n for n in nodes if pred[n] > pover and pred[n] >= c.min_load}
        for n in nodes:
            self._pstreak[n] = self._pstreak.get(n, 0) + 1 if n in phot else 0
        mean = d.mean
        ahead = _Ahead.of(parts, fc, moved, nodes, c.threshold)
        guide = (
            self._guide(parts, pload, d, nodes)
            if c.choose_target or c.choose_partition or c.predict_choose
            else None
        )
        g = guide

        def relief(o: tuple[int, PartitionLoad, list[str]]) -> tuple[float, float, int]:
            """``choose_partition``: the move leaving the source least over the bound, the longest relief next."""
            assert g is not None
            return (g.left(src, o[1].key), -g.low(o[1].key), o[0])

        # an early move is optional: its target keeps a margin below the bound
        roomy = mean * (1 + c.threshold * c.predict_room)
        proomy = pmean * (1 + c.threshold * c.predict_room)
        for src in sorted(phot, key=lambda n: (-pred[n], n)):
            if src in shed_now:
                continue  # shed reactively in this decision already
            if src in self._preempted:
                d.held.append(f"{src}: predicted hot, its moves pre-empted by earlier moves on a forecast")
                continue
            need = c.predict_persist or c.persist
            if self._pstreak[src] < need:
                d.held.append(f"{src}: predicted hot for {self._pstreak[src]}/{need} decisions")
                continue
            if not calm:
                d.held.append(
                    f"{src}: predicted hot, no move on a forecast while a node is hot or a move is under way"
                )
                continue
            if budget <= 0:
                d.held.append(
                    f"{src}: predicted hot, "
                    + ("no move token left (shadow reactive budget)" if d.budgeted else "move budget used")
                )
                continue
            if (
                now - self._predicted_at < c.predict_hold
                and not any(m.reason == PREDICTED for m in d.moves)
                and not (ahead is not None and ahead.lasting(src, c.hold_waiver))
            ):
                d.held.append(f"{src}: predicted hot, moves on a forecast held since {self._predicted_at:g}")
                continue
            n_before = len(d.moves)

            def targets(p: PartitionLoad, src: str) -> list[str]:
                """Where ``p`` may move off ``src`` on a forecast now (none if not a quiet moment for it)."""
                u, f = pload[p.key], fc[p.key]
                if not p.movable or p.key in self._last_move or p.key in moved:
                    return []
                if p.key in self._last_predicted:
                    return []  # moved on a forecast within ``predict_again``
                if u <= 0 or u < c.min_partition_load or u > f:
                    return []  # not a quiet moment for it
                return [
                    r
                    for r in p.replicas
                    if r != src
                    and r in loads
                    and loads[r] < mean
                    and loads[r] + u <= roomy
                    and loads[src] - loads[r] - u >= c.min_partition_load
                    and pred[r] < pmean
                    and pred[r] + f <= proomy
                ]

            def make(p: PartitionLoad, src: str, dst: str) -> None:
                u, f = pload[p.key], fc[p.key]
                if ahead is not None:
                    ahead.move(p.key, src, dst)
                if guide is not None:
                    guide.move(p.key, src, dst)
                moved[p.key] = dst
                pred[src] -= f
                pred[dst] += f
                if c.predict_again > 0:
                    self._last_predicted[p.key] = now
                self._record(Move(p.topic, p.partition, src, dst, PREDICTED), u, loads, now, d)

            led = sorted(by_leader.get(src, []), key=lambda q: (-fc[q.key], pload[q.key], q.key))
            left = budget
            if c.predict_replace:
                replay = self._replay(_Replay(src, parts, moved, fc, pred, pmean, pupper))
                if not replay:
                    d.held.append(
                        f"{src}: predicted hot, the reactive rule on the forecast loads would not move off it"
                    )
                    continue
                left = min(budget, len(replay))
            if c.predict_replace == "same":
                for p, dst in replay:
                    if left <= 0 or dst not in targets(p, src):
                        break
                    if ahead is not None and ahead.delta(p.key, src, dst) >= -_EPS:
                        break
                    make(p, src, dst)
                    left -= 1
            elif ahead is None:
                while left > 0 and pred[src] > pupper:
                    # a partition with no target now gets none later: targets only gain load
                    opts = [(i, p, ts) for i, p in enumerate(led) for ts in (targets(p, src),) if ts]
                    if not opts:
                        break
                    if c.predict_choose and g is not None:
                        # the move that removes the most predicted excess, if any
                        gain, i, r = min((g.delta(q.key, src, r), i, r) for i, q, ts in opts for r in ts)
                        if gain >= -_EPS:
                            break
                        make(led[i], src, r)
                        left -= 1
                        continue
                    _, p, ts = opts[0] if g is None or not c.choose_partition else min(opts, key=relief)
                    make(
                        p,
                        src,
                        min(
                            ts,
                            key=lambda r: (
                                g.peak(r, p.key) if g is not None and c.choose_target else 0.0,
                                pred[r],
                                loads[r],
                                r,
                            ),
                        ),
                    )
                    left -= 1
            elif c.predict_lasting > 0 and not ahead.lasting(src, c.predict_lasting):
                d.held.append(
                    f"{src}: predicted hot, over the bound at less than {c.predict_lasting:g} of its profile"
                )
                continue
            else:
                # over the long horizon: only a move that lowers the predicted
                # excess there, the one that lowers it most
                while left > 0 and pred[src] > pupper:
                    scored = [
                        (ahead.delta(p.key, src, r), pred[r], loads[r], r, i)
                        for i, p in enumerate(led)
                        for r in targets(p, src)
                    ]
                    best = min((x for x in scored if x[0] < -_EPS), default=None)
                    if best is None:
                        break
                    make(led[best[4]], src, best[3])
                    left -= 1
            budget -= len(d.moves) - n_before
            if len(d.moves) > n_before:
                self._pstreak[src] = 0
                self._predicted_at = now
                if c.predict_replace:
                    # the reactive move made early: its hysteresis too
                    self._streak[src] = 0
                    self._preempted[src] = (now + c.replace_within, pred[src])
            else:
                d.held.append(
                    f"{src}: predicted hot, no quiet partition a replica can take now and as predicted"
                )
        return pred, phot

    def _replay(self, r: _Replay) -> list[tuple[PartitionLoad, str]]:
        """The reactive rule (:meth:`_shed`) replayed on the forecast loads:
        the moves it would make off ``src`` within the horizon (its largest
        partitions first, each to the least loaded replica below the mean
        that stays at or below the bound, until ``src`` is at or below it; at
        most ``max_moves``).  With paths (:attr:`PartitionLoad.path`) the rule
        is replayed at each of their times in turn, on the node loads, mean and
        bound predicted for that time (a partition without one: its forecast),
        and the first time it moves (``src`` hot there and at the
        ``replace_points - 1`` times before) gives the moves; without, once on the
        forecasts (each partition's highest).  Cooldowns are not counted: the
        reactive cooldown ends within the horizon."""
        c = self.config
        src, parts, moved, fc = r.src, r.parts, r.moved, r.at
        width = max((len(p.path) for p in parts if p.path), default=0)
        if width == 0:
            return self._replay_at(replace(r, nodes=dict(r.nodes)))
        nodes = list(r.nodes)
        streak = 0
        for i in range(width):
            at = {p.key: p.path[i] if p.path and len(p.path) == width else fc[p.key] for p in parts}
            tmp = dict.fromkeys(nodes, 0.0)
            for p in parts:
                leader = moved.get(p.key, p.leader)
                if leader in tmp:
                    tmp[leader] += at[p.key]
            mean = sum(tmp.values()) / len(nodes)
            upper = mean * (1 + c.threshold)
            streak = streak + 1 if tmp[src] > upper and tmp[src] >= c.min_load else 0
            if streak >= c.replace_points:
                out = self._replay_at(replace(r, at=at, nodes=tmp, mean=mean, upper=upper))
                if out:
                    return out
        return []

    def _replay_at(self, r: _Replay) -> list[tuple[PartitionLoad, str]]:
        """:meth:`_replay` at one time: partition loads ``r.at``, node loads ``r.nodes`` (changed)."""
        c = self.config
        src, parts, moved, at, tmp, mean, upper = r.src, r.parts, r.moved, r.at, r.nodes, r.mean, r.upper
        led = [p for p in parts if moved.get(p.key, p.leader) == src]
        out: list[tuple[PartitionLoad, str]] = []
        for p in sorted(led, key=lambda q: (-at[q.key], q.key)):
            f = at[p.key]
            if tmp[src] <= upper or len(out) >= c.max_moves or f < c.min_partition_load:
                break
            if not p.movable:
                continue
            ts = [r for r in p.replicas if r != src and r in tmp and tmp[r] < mean and tmp[r] + f <= upper]
            if ts:
                dst = min(ts, key=lambda r: (tmp[r], r))
                tmp[src] -= f
                tmp[dst] += f
                out.append((p, dst))
        return out

    def _record(self, mv: Move, u: float, loads: dict[str, float], now: float, d: Decision) -> None:
        """Count a move of ``u`` units/s as made: node loads, cooldowns, the decision, the metrics."""
        loads[mv.src] -= u
        loads[mv.dst] += u
        self._moved[(mv.topic, mv.partition)] = (now, u)
        self._last_move[(mv.topic, mv.partition)] = now
        d.moves.append(mv)
        self.moves_total[mv.reason] = self.moves_total.get(mv.reason, 0) + 1

    def _free(
        self, p: PartitionLoad, pload: Mapping[tuple[str, int], float], taken: set[tuple[str, int]]
    ) -> bool:
        """Whether a plan may move ``p``: movable, out of cooldown, not moved in
        this decision, not too small to move."""
        return (
            p.movable
            and p.key not in self._moved
            and p.key not in taken
            and pload[p.key] >= self.config.min_partition_load
        )

    def _follow(
        self,
        by_key: Mapping[tuple[str, int], PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        mean: float,
        upper: float,
        now: float,
        budget: int,
        d: Decision,
    ) -> int:
        """Make the next moves of the pending plan (``plan_after``), each
        checked again against this decision's loads: its partition still led
        by the move's source and free to move, its target at or below
        ``upper`` with it (and below ``mean`` for a move making room), the hot
        node still hot for the last one.  A move that fails the check drops the
        rest of the plan.  Returns the moves made."""
        c = self.config
        made = 0
        taken = {(m.topic, m.partition) for m in d.moves}
        while self._plan and made < budget:
            mv = self._plan[0]
            key = (mv.topic, mv.partition)
            p = by_key.get(key)
            u = pload.get(key, 0.0)
            last = len(self._plan) == 1
            ok = (
                p is not None
                and p.leader == mv.src
                and mv.dst in p.replicas
                and p.movable
                and key not in self._moved
                and key not in taken
                and u >= c.min_partition_load
                and mv.src in loads
                and mv.dst in loads
                and (loads[mv.dst] + u <= upper or (self._plan_relief and mv.dst == self._plan_src))
                and (loads[mv.src] > upper if last else self._plan_relief or loads[mv.dst] < mean)
            )
            if not ok:
                d.held.append(
                    f"{self._plan_src}: plan dropped at {mv.topic}/{mv.partition} {mv.src}->{mv.dst}"
                )
                self._plan = []
                break
            self._record(mv, u, loads, now, d)
            self._plan.pop(0)
            made += 1
            if last:
                self._streak[mv.src] = 0
        return made

    def _plan_stuck(
        self,
        parts: Sequence[PartitionLoad],
        by_leader: Mapping[str, Sequence[PartitionLoad]],
        by_key: Mapping[tuple[str, int], PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        mean: float,
        upper: float,
        nodes: Sequence[str],
        hot: set[str],
        now: float,
        budget: int,
        d: Decision,
    ) -> None:
        """A plan (``plan_after``) for the hottest stuck node that has one,
        its first moves made now (as many as ``budget`` allows)."""
        c = self.config
        if not any(p.forecast is not None for p in parts):
            return
        shed = {m.src for m in d.moves}
        cands = [n for n in hot if n not in shed and self._streak[n] >= c.plan_after]
        if not cands:
            return
        fc = {
            p.key: pload[p.key]
            if p.forecast is None or not math.isfinite(p.forecast)
            else max(0.0, p.forecast)
            for p in parts
        }
        moved = {(m.topic, m.partition): m.dst for m in d.moves}
        ahead = _Ahead.of(parts, fc, moved, nodes, c.threshold)
        if ahead is None:
            return
        taken = set(moved)
        over = 1 + c.plan_margin * c.threshold / (1 + c.threshold)
        for src in sorted(cands, key=lambda n: (-loads[n], n)):
            if loads[src] <= upper * over:
                d.held.append(
                    f"{src}: hot, no single move fits, within {c.plan_margin:g} of the band (no plan)"
                )
                continue
            if not ahead.lasting(src, c.plan_lasting, over):
                d.held.append(f"{src}: hot, no single move fits, not over the bound in its profile (no plan)")
                continue
            plan = self._multi(src, by_leader, pload, loads, mean, upper, taken)
            if plan:
                self._plan, self._plan_src, self._plan_relief = plan, src, False
                self._follow(by_key, pload, loads, mean, upper, now, budget, d)
                return

    def _unstick(
        self,
        parts: Sequence[PartitionLoad],
        by_key: Mapping[tuple[str, int], PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        mean: float,
        upper: float,
        nodes: Sequence[str],
        hot: set[str],
        held: set[str],
        now: float,
        budget: int,
        d: Decision,
    ) -> int:
        """A relief plan (``unstick_after``) for the hottest stuck node that
        has one, its first moves made now (as many as ``budget`` allows).
        Returns the moves made.  A node is looked at once it has been hot
        ``unstick_after`` decisions, then every ``persist`` decisions while it
        stays hot (the search is not free: at most a few thousand sequences)."""
        c = self.config
        band = upper - mean
        cands = [
            n
            for n in hot
            if n not in held
            and self._streak[n] >= c.unstick_after
            and (self._streak[n] - c.unstick_after) % c.persist == 0
            and loads[n] > upper + c.unstick_margin * band
        ]
        if not cands:
            return 0
        taken = {(m.topic, m.partition) for m in d.moves}
        forecast = c.predict and any(p.forecast is not None for p in parts)
        fc = {
            p.key: pload[p.key]
            if not forecast or p.forecast is None or not math.isfinite(p.forecast)
            else max(0.0, p.forecast)
            for p in parts
        }
        moved = {(m.topic, m.partition): m.dst for m in d.moves}
        pred: dict[str, float] | None = None
        pupper = 0.0
        if forecast:
            pred = dict.fromkeys(nodes, 0.0)
            for p in parts:
                ld = moved.get(p.key, p.leader)
                if ld in pred:
                    pred[ld] += fc[p.key]
            pupper = sum(pred.values()) / len(nodes) * (1 + c.threshold) if nodes else 0.0
        free = [
            relief.Part(p.key, moved.get(p.key, p.leader), p.replicas, pload[p.key], fc[p.key])
            for p in parts
            if self._free(p, pload, taken)
        ]
        for src in sorted(cands, key=lambda n: (-loads[n], n)):
            if pred is not None and pred[src] <= pupper:
                d.held.append(f"{src}: stuck hot, predicted at or below the bound (no plan)")
                continue
            plan = relief.search(
                src,
                free,
                loads,
                upper,
                predicted=pred,
                predicted_upper=pupper,
                depth=c.unstick_moves,
                min_gain=c.min_partition_load**2,
                slack=c.unstick_slack * band,
            )
            if plan is None:
                d.held.append(f"{src}: stuck hot, no plan of {c.unstick_moves} moves or fewer relieves it")
                continue
            self._plan = [Move(k[0], k[1], s_, t_, PLANNED) for k, s_, t_ in plan.moves]
            self._plan_src, self._plan_relief = src, True
            return self._follow(by_key, pload, loads, mean, upper, now, budget, d)
        return 0

    def _multi(
        self,
        src: str,
        by_leader: Mapping[str, Sequence[PartitionLoad]],
        pload: Mapping[tuple[str, int], float],
        loads: Mapping[str, float],
        mean: float,
        upper: float,
        taken: set[tuple[str, int]],
    ) -> list[Move]:
        """The plan of fewest moves (at most ``plan_moves``) for ``src``: one
        of its partitions ``p`` to a replica ``r`` it does not fit on now,
        after partitions of ``r``'s have moved to replicas of theirs below the
        mean (other than ``src``) that stay at or below ``upper`` -- the one
        partition that makes room enough (the smallest such), else the largest
        first.  Every node the plan loads ends at or below ``upper``, and the
        plan as a whole lowers the sum of squared node loads by more than
        ``min_partition_load`` squared; of those, the fewest moves, then the
        least excess over ``upper``, then the largest fall in the sum."""
        c = self.config

        def free(p: PartitionLoad) -> bool:
            return self._free(p, pload, taken)

        best: tuple[int, float, float, tuple[str, int], str] | None = None
        plan: list[Move] = []
        for p in by_leader.get(src, []):
            if not free(p):
                continue
            up = pload[p.key]
            for r in p.replicas:
                if r == src or r not in loads or (loads[r] < mean and loads[r] + up <= upper):
                    continue  # a single move's business
                tmp = dict(loads)
                room: list[Move] = []
                used = {p.key}
                while tmp[r] + up > upper and len(room) < c.plan_moves - 1:
                    need = tmp[r] + up - upper
                    opts = [
                        (
                            0 if pload[q.key] >= need else 1,
                            pload[q.key] if pload[q.key] >= need else -pload[q.key],
                            tmp[s],
                            s,
                            q.key,
                            q,
                        )
                        for q in by_leader.get(r, [])
                        if q.key not in used and free(q)
                        for s in q.replicas
                        if s not in (r, src) and s in tmp and tmp[s] < mean and tmp[s] + pload[q.key] <= upper
                    ]
                    if not opts:
                        break
                    _, _, _, s, _, q = min(opts, key=lambda o: o[:5])
                    used.add(q.key)
                    tmp[r] -= pload[q.key]
                    tmp[s] += pload[q.key]
                    room.append(Move(q.topic, q.partition, r, s, PLANNED))
                if tmp[r] + up > upper:
                    continue
                tmp[src] -= up
                tmp[r] += up
                gain = sum(loads[n] ** 2 - tmp[n] ** 2 for n in tmp)
                if gain <= c.min_partition_load**2:
                    continue
                excess = sum(max(0.0, v - upper) for v in tmp.values())
                score = (len(room), excess, -gain, p.key, r)
                if best is None or score < best:
                    best, plan = score, [*room, Move(p.topic, p.partition, src, r, PLANNED)]
        return plan

    def _chain(
        self,
        src: str,
        by_leader: Mapping[str, Sequence[PartitionLoad]],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        mean: float,
        upper: float,
        now: float,
        d: Decision,
    ) -> list[Move]:
        """A two-move plan for ``src``, hot now with no single move that fits:
        one of its partitions ``p`` to a replica ``r`` that cannot take it as
        it is, after a partition ``q`` of ``r``'s moves to a replica ``s`` of
        its own (``s`` may be ``src``: a swap).  Every node it loads stays at
        or below ``upper`` (a third node below the mean), ``src`` ends lower
        and the plan lowers the sum of squared node loads by more than
        ``min_partition_load`` squared; of those, the plan leaving the least
        excess over ``upper`` and then the lowest sum of squares."""
        c = self.config
        taken = {(m.topic, m.partition) for m in d.moves}

        def free(p: PartitionLoad) -> bool:
            return self._free(p, pload, taken)

        best: tuple[float, float, tuple[str, int], tuple[str, int], str, str] | None = None
        found: tuple[PartitionLoad, PartitionLoad] | None = None
        for p in by_leader.get(src, []):
            if not free(p):
                continue
            up = pload[p.key]
            for r in p.replicas:
                if r == src or r not in loads or loads[r] + up <= upper:
                    continue  # a single move's business
                for q in by_leader.get(r, []):
                    uq = pload[q.key]
                    if q.key == p.key or not free(q) or loads[r] + up - uq > upper:
                        continue
                    for s in q.replicas:
                        if s == r or s not in loads:
                            continue
                        after = {src: loads[src] - up, r: loads[r] + up - uq}
                        if s == src:
                            after[src] += uq
                        elif loads[s] >= mean or loads[s] + uq > upper:
                            continue
                        else:
                            after[s] = loads[s] + uq
                        if after[src] >= loads[src]:
                            continue
                        gain = sum(loads[n] ** 2 - v * v for n, v in after.items())
                        if gain <= c.min_partition_load**2:
                            continue
                        excess = sum(max(0.0, v - upper) for v in after.values())
                        score = (excess, -gain, p.key, q.key, r, s)
                        if best is None or score < best:
                            best, found = score, (p, q)
        if best is None or found is None:
            return []
        p, q = found
        r, s = best[4], best[5]
        out = [Move(q.topic, q.partition, r, s, PLANNED), Move(p.topic, p.partition, src, r, PLANNED)]
        for mv, part_ in ((out[0], q), (out[1], p)):
            self._record(mv, pload[part_.key], loads, now, d)
        return out

    def _shed(
        self,
        src: str,
        led: Sequence[PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        loads: dict[str, float],
        mean: float,
        upper: float,
        now: float,
        budget: int,
        d: Decision,
        guide: _Ahead | None = None,
        reason: str = OVERLOADED,
    ) -> list[Move]:
        """The reactive moves off ``src``: its largest partitions first, each to
        the least loaded replica below the mean that stays at or below
        ``upper``, until ``src`` is at or below it.  With ``guide`` (the
        forecast-guided choices on), ``choose_partition`` and ``choose_target``
        pick among the same moves by the forecast instead.  ``reason``: the
        moves' (:data:`PREDICTED` for an early shed, ``early_shed``)."""
        c = self.config
        out: list[Move] = []
        cooling = busy = 0
        cands: list[PartitionLoad] = []
        for p in sorted(led, key=lambda q: (-pload[q.key], q.key)):
            if pload[p.key] < c.min_partition_load:
                break  # sorted: the rest are colder
            if not p.movable:
                busy += 1
            elif p.key in self._moved:
                cooling += 1
            else:
                cands.append(p)

        def targets(p: PartitionLoad) -> list[str]:
            u = pload[p.key]
            return [
                r for r in p.replicas if r != src and r in loads and loads[r] < mean and loads[r] + u <= upper
            ]

        by_part = guide is not None and c.choose_partition
        by_target = guide is not None and c.choose_target
        while len(out) < budget and loads[src] > upper:
            # a partition with no target now gets none later in this loop: targets only gain load
            opts = [(p, ts) for p in cands for ts in (targets(p),) if ts]
            if not opts:
                break
            p, ts = opts[0]
            if by_part and guide is not None:
                g = guide
                p, ts = opts[
                    min(
                        range(len(opts)),
                        key=lambda i: (g.left(src, opts[i][0].key), -g.low(opts[i][0].key), i),
                    )
                ]
            if by_target and guide is not None:
                dst = min(ts, key=lambda r: (guide.peak(r, p.key), loads[r], r))
            else:
                dst = min(ts, key=lambda r: (loads[r], r))
            cands.remove(p)
            mv = Move(p.topic, p.partition, src, dst, reason)
            self._record(mv, pload[p.key], loads, now, d)
            if guide is not None:
                guide.move(p.key, src, dst)
            out.append(mv)
        if not out:
            why = "no replica below the mean can take any of its partitions"
            extra = [f"{cooling} in cooldown"] * bool(cooling) + [f"{busy} failing over or moving"] * bool(
                busy
            )
            if extra:
                why += f" ({', '.join(extra)})"
            d.held.append(f"{src}: {why}")
        return out


#: Excess (units/s summed over a profile's points) below which a move does not count as lowering it.
_EPS = 1e-6


class _Ahead:
    """Node loads over the long horizon of the partitions' profiles (the
    short-horizon forecast first, then each profile point) and the predicted
    bound at each point: what a forecast move must improve."""

    def __init__(
        self, vec: dict[tuple[str, int], tuple[float, ...]], node: dict[str, list[float]], bound: list[float]
    ) -> None:
        self.vec, self.node, self.bound = vec, node, bound

    @classmethod
    def of(
        cls,
        parts: Sequence[PartitionLoad],
        fc: Mapping[tuple[str, int], float],
        moved: Mapping[tuple[str, int], str],
        nodes: Sequence[str],
        threshold: float,
    ) -> _Ahead | None:
        """None when no partition carries a profile."""
        width = max((len(p.profile) for p in parts if p.profile), default=0)
        if width == 0 or not nodes:
            return None
        vec: dict[tuple[str, int], tuple[float, ...]] = {}
        for p in parts:
            prof = p.profile if p.profile and len(p.profile) == width else (fc[p.key],) * width
            vec[p.key] = (fc[p.key], *(max(0.0, x) if math.isfinite(x) else fc[p.key] for x in prof))
        return cls._summed(parts, vec, moved, nodes, threshold)

    @classmethod
    def _summed(
        cls,
        parts: Sequence[PartitionLoad],
        vec: dict[tuple[str, int], tuple[float, ...]],
        moved: Mapping[tuple[str, int], str],
        nodes: Sequence[str],
        threshold: float,
    ) -> _Ahead:
        """Each node's row (the vectors of the partitions it leads, ``moved``
        applied, summed) and the bound at each point."""
        width = len(next(iter(vec.values()))) if vec else 0
        node = {n: [0.0] * width for n in nodes}
        for p in parts:
            leader = moved.get(p.key, p.leader)
            if leader in node:
                row = node[leader]
                for i, x in enumerate(vec[p.key]):
                    row[i] += x
        bound = [sum(node[n][i] for n in nodes) / len(nodes) * (1 + threshold) for i in range(width)]
        return cls(vec, node, bound)

    @classmethod
    def along(
        cls,
        parts: Sequence[PartitionLoad],
        pload: Mapping[tuple[str, int], float],
        moved: Mapping[tuple[str, int], str],
        nodes: Sequence[str],
        threshold: float,
    ) -> _Ahead | None:
        """Node loads now (point 0) and along the partitions' paths over the
        forecast's horizon (:attr:`PartitionLoad.path`; a partition without
        one: its forecast at every point, the present without a forecast):
        what the forecast-guided choices pick by.  None when no partition
        carries a forecast."""
        if not nodes or not any(p.forecast is not None or p.path for p in parts):
            return None
        width = max((len(p.path) for p in parts if p.path), default=1)
        vec: dict[tuple[str, int], tuple[float, ...]] = {}
        for p in parts:
            u = pload[p.key]
            f = u if p.forecast is None or not math.isfinite(p.forecast) else max(0.0, p.forecast)
            path = p.path if p.path and len(p.path) == width else (f,) * width
            vec[p.key] = (u, *(max(0.0, x) if math.isfinite(x) else f for x in path))
        return cls._summed(parts, vec, moved, nodes, threshold)

    def peak(self, dst: str, key: tuple[str, int]) -> float:
        """``dst``'s highest load over the bound (negative: room left), now and
        at every point, once it has ``key``."""
        return max(x + y - b for x, y, b in zip(self.node[dst], self.vec[key], self.bound, strict=True))

    def left(self, src: str, key: tuple[str, int]) -> float:
        """``src``'s excess over the bound summed now and over the points once ``key`` is off it."""
        return self._excess([x - y for x, y in zip(self.node[src], self.vec[key], strict=True)])

    def low(self, key: tuple[str, int]) -> float:
        """``key``'s lowest predicted load over the points: the relief its move lasts for."""
        return min(self.vec[key][1:])

    def passes(self, node: str, points: int) -> bool:
        """Whether ``node`` is at or below the bound at every point after the
        first ``points`` (None of them left: False)."""
        row, bound = self.node[node][1 + points :], self.bound[1 + points :]
        return bool(row) and all(x <= b for x, b in zip(row, bound, strict=True))

    def _excess(self, row: Sequence[float]) -> float:
        return sum(max(0.0, x - b) for x, b in zip(row, self.bound, strict=True))

    def delta(self, key: tuple[str, int], src: str, dst: str) -> float:
        """How moving ``key`` from ``src`` to ``dst`` changes the predicted excess."""
        v = self.vec[key]
        a, b = self.node[src], self.node[dst]
        after = self._excess([x - y for x, y in zip(a, v, strict=True)]) + self._excess(
            [x + y for x, y in zip(b, v, strict=True)]
        )
        return after - self._excess(a) - self._excess(b)

    def lasting(self, node: str, share: float, above: float = 1.0) -> bool:
        """Whether ``node`` is predicted over the bound (times ``above``) at
        ``share`` or more of the profile's points (a lasting rise, not the next
        minutes' blip)."""
        row = self.node[node]
        over = sum(1 for x, b in zip(row[1:], self.bound[1:], strict=True) if x > b * above)
        return over >= share * (len(row) - 1)

    def move(self, key: tuple[str, int], src: str, dst: str) -> None:
        """Apply a move."""
        v = self.vec[key]
        self.node[src] = [x - y for x, y in zip(self.node[src], v, strict=True)]
        self.node[dst] = [x + y for x, y in zip(self.node[dst], v, strict=True)]


#: What a ``profiles`` source (e.g.
#: :meth:`sprawl.forecast.feed.TrafficFeed.partition_profiles`) answers while
#: the profiles are being computed and none recent enough is at hand: the
#: decision then acts on the present alone (no forecasts), since forecasts
#: without their profiles would shed on the short horizon unchecked
#: (``predict_lasting`` needs profiles).  Compared by identity.
PROFILES_PENDING: Mapping[tuple[str, int], Sequence[float]] = MappingProxyType({})


def partitions_from(
    placement: Mapping[str, Sequence[Mapping[str, Any]]],
    rates: Mapping[str, Mapping[tuple[str, int], tuple[float, float]]],
    movable: Callable[[tuple[str, int]], bool] | None = None,
    forecasts: Mapping[tuple[str, int], float] | None = None,
    profiles: Mapping[tuple[str, int], Sequence[float]] | None = None,
    paths: Mapping[tuple[str, int], Sequence[float]] | None = None,
) -> list[PartitionLoad]:
    """The balancer's view from the applied placement (``metadata.placement``:
    topic -> list of ``{"leader", "replicas", ...}``) and the gossiped rates
    (node -> {(topic, partition): (msgs_s, bytes_s)}, as
    :func:`sprawl.gossip.load.rates_by_node` gives them).  A partition's
    rate is taken only from its current leader's report (None if absent).
    Partitions without a leader are left out; single-replica ones count
    towards their leader's load but have nowhere to move.  ``forecasts``
    (e.g. :meth:`sprawl.forecast.traffic.TrafficForecaster.partition_forecasts`)
    gives partitions their predicted load, ``profiles`` (e.g.
    :meth:`sprawl.forecast.traffic.TrafficForecaster.partition_profiles`)
    their predicted load over a longer horizon, ``paths`` (e.g.
    :meth:`sprawl.forecast.traffic.TrafficForecaster.partition_paths`) over
    the forecast's horizon."""
    out: list[PartitionLoad] = []
    for topic, parts in placement.items():
        for p, pl in enumerate(parts):
            leader = pl.get("leader")
            reps = tuple(str(r) for r in pl.get("replicas") or ())
            if not leader:
                continue
            leader = str(leader)
            rate = rates.get(leader, {}).get((topic, p))
            key = (topic, p)
            out.append(
                PartitionLoad(
                    topic,
                    p,
                    leader,
                    reps,
                    msgs_s=None if rate is None else rate[0],
                    bytes_s=None if rate is None else rate[1],
                    movable=True if movable is None else movable(key),
                    forecast=None if forecasts is None else forecasts.get(key),
                    profile=None if profiles is None or key not in profiles else tuple(profiles[key]),
                    path=None if paths is None or key not in paths else tuple(paths[key]),
                )
            )
    return out


def replica_move(
    decision: Decision,
    partitions: Iterable[PartitionLoad],
    live: Iterable[str],
    *,
    bytes_per_unit: float = 1024.0,
    persist_factor: int = 3,
    recently_moved: Callable[[tuple[str, int]], bool] | None = None,
) -> Move | None:
    """A replica to move off a *persistently* hot node, or None.

    Leadership moves stay inside a partition's replica set; when every
    replica of a hot node's partitions is as loaded, the node stays hot
    decision after decision.  Once it has been hot for ``persist_factor``
    times the decisions that trigger a leadership move, and this decision
    moved nothing off it (nor held its moves as pre-empted by a move on a
    forecast: ``BalanceConfig.predict_replace``, nor skipped its shed as
    passing: ``BalanceConfig.shed_skip``), its hottest movable partition gets a new replica on
    the least loaded live node below the mean that does not hold one and stays
    at or below the bound with it (this decision's moves counted) -- the
    node replaces the hot one in the partition's replica set and takes over
    its leadership (the controller copies first, then hands over).  At most
    one per decision; ``recently_moved`` keeps a partition from moving again
    too soon.
    """
    moved_from = (
        {m.src for m in decision.moves}
        | set(decision.preempted)
        | set(decision.skipped)
        | set(decision.planned)
    )
    hot = [
        n
        for n, v in decision.nodes.items()
        if v.hot and v.streak >= persist_factor * decision.persist and n not in moved_from
    ]
    if not hot:
        return None
    src = max(hot, key=lambda n: decision.nodes[n].load)
    live_set = set(live)
    cool = sorted(
        (n for n, v in decision.nodes.items() if n in live_set and n != src and v.projected < decision.mean),
        key=lambda n: (decision.nodes[n].projected, n),
    )

    def load(p: PartitionLoad) -> float:
        return (p.msgs_s or 0.0) + (p.bytes_s or 0.0) / bytes_per_unit

    led = sorted(
        (p for p in partitions if p.leader == src and p.movable and load(p) > 0),
        key=lambda p: (-load(p), p.key),
    )
    for p in led:
        if recently_moved is not None and recently_moved(p.key):
            continue
        # like a leadership move, never one that makes the new node hot
        fits = (n for n in cool if decision.nodes[n].projected + load(p) <= decision.upper)
        dst = next((n for n in fits if n not in p.replicas), None)
        if dst is not None:
            return Move(p.topic, p.partition, src, dst, "persistently_hot")
    return None


@dataclass(frozen=True)
class _Replay:
    """What :meth:`Balancer._replay` replays the reactive rule on: the node
    ``src`` it would move off, the partitions and this decision's moves so far
    (key -> new leader), each partition's load ``at`` (the forecasts, or one
    time of the paths), each node's load ``nodes`` (a replay at one time
    changes its own copy), their mean and the hot bound ``upper``."""

    src: str
    parts: Sequence[PartitionLoad]
    moved: Mapping[tuple[str, int], str]
    at: Mapping[tuple[str, int], float]
    nodes: dict[str, float]
    mean: float
    upper: float
