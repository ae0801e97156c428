"""The cluster: the same sources run by worker processes on several hosts (docs/cluster.md).

- :mod:`headwater._cluster._limits`: each source's limits held in Redis
  (:class:`~headwater._cluster._limits.RedisLimits`), slots as leases timed
  by the Redis server's clock.
- :mod:`headwater._cluster._keeper`: one thread per process renewing its
  holders' leases, telling a holder when it lost its lease.
- :mod:`headwater._cluster._leader`: the lease that makes one process the
  scheduler.
- ``lua/``: the Redis scripts all of them run.

Needs the ``cluster`` extra (``pip install 'headwater[cluster]'``).
"""
