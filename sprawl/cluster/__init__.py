"""The cluster's agreed metadata and how it is kept.

* :mod:`sprawl.cluster.metadata` -- the replicated state machine [pure].
* :mod:`sprawl.cluster.placement` -- rendezvous hashing of partitions [pure].
* :mod:`sprawl.cluster.voters` -- which membership change the leader makes next [pure].
* :mod:`sprawl.cluster.control` -- Raft driver, peer channel and broker glued together [adapter].
"""
