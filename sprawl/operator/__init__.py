"""The Kubernetes operator of a ``SprawlCluster``: a pure reconcile core
(:mod:`sprawl.operator.reconcile`) and a thin adapter on the ``kubernetes``
client (:mod:`sprawl.operator.adapter`, the optional ``k8s`` extra)."""
