"""Replication of one partition's log among its replicas.

The cores are pure (no Twisted, no I/O): messages, epochs, replica and
failover.  :mod:`sprawl.replication.service` is the Twisted adapter that runs
them on a node.

* :mod:`sprawl.replication.messages` -- what replicas and the controller say.
* :mod:`sprawl.replication.epochs` -- the leader-epoch cache (which epoch wrote which offsets).
* :mod:`sprawl.replication.replica` -- one replica: leader or follower of a partition.
* :mod:`sprawl.replication.failover` -- the controller's side: fence a majority, pick the most
  up-to-date replica, assign the next epoch.
* :mod:`sprawl.replication.service` -- the adapter: routes a node's replication
  frames and ticks its replicas and failover cores (imports Twisted).
* :mod:`sprawl.replication.partition` -- one ``PartitionReplication`` per partition
  this node replicates, driving a core through the broker and the peer channel.
* :mod:`sprawl.replication.replica_state` -- a replica's durable state (in LMDB ``meta``).
* :mod:`sprawl.replication.envelope` -- the replication frame.

The protocol is Raft's log replication with the election replaced by the
controller (the Raft leader of the metadata group): offsets are log indexes,
leader epochs are terms.  See docs/architecture.md, "Replication".
"""
