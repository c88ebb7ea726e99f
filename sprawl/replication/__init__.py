"""Replication of one partition's log among its replicas.  Pure (no Twisted).

* :mod:`sprawl.replication.messages` -- what replicas and the controller say.
* :mod:`sprawl.replication.epochs` -- the leader-epoch cache (which epoch wrote which offsets).
* :mod:`sprawl.replication.replica` -- one replica: leader or follower of a partition.
* :mod:`sprawl.replication.failover` -- the controller's side: fence a majority, pick the most
  up-to-date replica, assign the next epoch.

The protocol is Raft's log replication with the election replaced by the
controller (the Raft leader of the metadata group): offsets are log indexes,
leader epochs are terms.  See docs/architecture.md, "Replication".
"""
