"""Integration: five real ``twistd sprawl`` processes form a cluster by SWIM
gossip over UDP on 127.0.0.1, detect a ``kill -9`` within the bound the
gossip configuration implies, and take the node back when it restarts on
its data dir with a higher incarnation.

Detection bound for a crash, 5 members, default :class:`GossipConfig`
(probe_interval 1 s, probe_timeout 0.5 s, suspicion_mult 4,
suspicion_max_timeout_mult 6, retransmit_mult 4, gossip_interval 0.2 s):

  first probe      every survivor probes in a shuffled round robin over the
                   other 4: at worst (2·4 - 1) probe intervals away       7.0 s
+ failed probe     max(probe_interval, 2·probe_timeout) + 2 ticks         1.2 s
+ spread           retransmit_limit = 4·ceil(log10 6) = 4 gossip rounds
                   + 1 tick                                               0.9 s
+ max suspicion    6 · 4 · max(1, log10 5) · probe_interval              24.0 s
                                                                         = 33.1 s

(independent confirmations from the other suspecting members normally cut
the suspicion timeout to its 4 s minimum), plus 2 s for scheduling real
processes on a shared machine: 35 s on an idle machine, stretched by the
load measured while other work holds the cores (:func:`harness.poll_until`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness import NodeProcess, http_json, metrics_text, poll_until, scaled
from sprawl.gossip import GossipConfig
from sprawl.gossip.broadcast import retransmit_limit
from sprawl.gossip.suspicion import suspicion_timeout

pytestmark = pytest.mark.integration

N = 5
TICK = 0.1
SCHEDULING_SLACK = 2.0
CONVERGE_BOUND = 20.0
REJOIN_BOUND = 20.0


def detection_bound(config: GossipConfig, n: int) -> float:
    """Worst-case seconds from a crash until every survivor holds it dead
    (the derivation is in the module doc)."""
    first_probe = (2 * (n - 1) - 1) * config.probe_interval
    probe = max(config.probe_interval, 2 * config.probe_timeout) + 2 * TICK
    spread = retransmit_limit(config.retransmit_mult, n) * config.gossip_interval + TICK
    t_max = config.suspicion_max_timeout_mult * suspicion_timeout(
        config.suspicion_mult, n, config.probe_interval
    )
    return first_probe + probe + spread + t_max


def _cluster(node: NodeProcess) -> dict[str, Any] | None:
    status, data = http_json(node.url + "/v1/cluster", timeout=5)
    return data if status == 200 and isinstance(data, dict) else None


def _states(node: NodeProcess) -> dict[str, dict[str, Any]]:
    """id → member view, as ``node`` sees the cluster (empty if it does not answer)."""
    info = _cluster(node)
    return {m["id"]: m for m in (info or {}).get("members", [])}


def _wait(cond: Callable[[], bool], bound: float) -> float | None:
    """Poll ``cond`` every 0.2 s for at most ``bound`` seconds, stretched by
    the load (:func:`harness.poll_until`); the seconds it took, or None."""
    return poll_until(cond, bound, step=0.2)


def test_five_nodes_join_detect_a_crash_and_take_the_restarted_node_back(sprawl_nodes: Any) -> None:
    config = GossipConfig()
    bound = detection_bound(config, N) + SCHEDULING_SLACK
    assert math.isclose(bound, 35.1, abs_tol=0.01)

    seed = sprawl_nodes(name="seed")
    seeds = ("--seeds", f"127.0.0.1:{seed.peer_port}")
    with ThreadPoolExecutor(N - 1) as pool:
        others = list(pool.map(lambda i: sprawl_nodes(*seeds, name=f"node{i}"), range(1, N)))
    nodes = [seed, *others]
    # UDP and TCP peer ports are one number; ports.json has it
    for n in nodes:
        assert json.loads((n.data_dir / "ports.json").read_text())["peer"] == n.peer_port

    def all_alive(among: list[NodeProcess], n: int) -> bool:
        for node in among:
            st = _states(node)
            if sum(m["state"] == "alive" for m in st.values()) != n:
                return False
        return True

    took = _wait(lambda: all_alive(nodes, N), CONVERGE_BOUND)
    assert took is not None, f"not every node saw {N} alive: {[_states(n) for n in nodes]}"
    print(f"\n{N} nodes converged {took:.1f} s after the last one started")

    view = _states(seed)
    victim = others[1]
    victim_id = next(i for i, m in view.items() if m["http"] == victim.url)
    before = view[victim_id]["incarnation"]
    for m in view.values():
        assert m["peer"].startswith("127.0.0.1:") and m["http"].startswith("http://127.0.0.1:")
        assert m["version"] and "load" in m
    # the seed-compatible views agree
    status, answer = http_json(seed.url + "/status")
    assert status == 200 and len(answer["cluster_members"]) == N, (status, answer)
    status, answer = http_json(seed.url + "/dht")
    assert status == 200 and len(answer["members"]) == N, (status, answer)

    victim.kill()  # kill -9
    survivors = [n for n in nodes if n is not victim]
    detected = _wait(
        lambda: all(_states(n).get(victim_id, {}).get("state") == "dead" for n in survivors), bound
    )
    assert detected is not None, f"the crash was not seen as dead within {scaled(bound):.1f} s"
    print(f"kill -9 seen as dead by all {N - 1} survivors after {detected:.1f} s (bound {bound:.1f} s)")
    text = metrics_text(seed.url, timeout=5)
    assert 'sprawl_gossip_members{state="dead"} 1.0' in text
    assert "sprawl_gossip_suspicions_total" in text

    restarted = sprawl_nodes(*seeds, data_dir=victim.data_dir)
    back = _wait(lambda: all_alive([*survivors, restarted], N), REJOIN_BOUND)
    assert back is not None, "the restarted node was not taken back as alive by everyone"
    print(f"restarted node alive in every view after {back:.1f} s")
    for n in [*survivors, restarted]:
        m = _states(n)[victim_id]
        assert m["state"] == "alive" and m["incarnation"] > before
        assert m["http"] == restarted.url
    saved = json.loads((victim.data_dir / "gossip.json").read_text())["incarnation"]
    assert saved > before
