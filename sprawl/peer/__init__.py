"""The TCP peer channel: one listener per node on ``--bind-addr:--bind-port``
(the gossip UDP port number), carrying Raft now and replication later.

* :mod:`sprawl.peer.frames` -- length-prefixed frames and the handshake [pure].
* :mod:`sprawl.peer.tcp` -- listener, per-peer reconnecting senders [adapter].
"""
