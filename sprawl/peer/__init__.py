"""The TCP peer channel: one listener per node on ``--bind-addr:--bind-port``
(the gossip UDP port number), carrying Raft now and replication later.

* :mod:`sprawl.peer.frames` -- length-prefixed frames and the handshake [pure].
* :mod:`sprawl.peer.tcp` -- the channel: listener, per-peer senders, handlers [adapter].
* :mod:`sprawl.peer.inbound` -- one accepted connection [adapter].
* :mod:`sprawl.peer.outbound` -- one peer's reconnecting sender and its connection [adapter].
"""
