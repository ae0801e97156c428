"""The cluster: the same sources run by worker processes on several hosts (docs/cluster.md).

- :mod:`headwater._cluster._limits`: each source's limits held in Redis
  (:class:`~headwater._cluster._limits.RedisLimits`), slots as leases timed
  by the Redis server's clock.
- :mod:`headwater._cluster._keeper`: one keeper per process renewing its
  holders' leases, telling a holder when it lost its lease.
- :mod:`headwater._cluster._leader`: the lease that makes one process the
  scheduler; :mod:`headwater._cluster._dispatch`, the scheduler
  (:class:`~headwater._cluster._dispatch.Dispatcher`) that holds it.
- ``lua/``: the Redis scripts all of them run, through
  :mod:`headwater._cluster._scripts` (by SHA, the text as fallback).
- :mod:`headwater._cluster._pgstore`: the records in PostgreSQL
  (:class:`~headwater._cluster._pgstore.PostgresStore`, a ``RecordStore``
  whose every state change can be a conditional update); its schema
  (:mod:`~headwater._cluster._pgschema`), SQL (:mod:`~headwater._cluster._pgsql`)
  and masked URLs (:mod:`~headwater._cluster._pgurl`); group commit, the
  writes of threads at the same time sent as one
  (:mod:`~headwater._cluster._grouped`).
- :mod:`headwater._cluster._pgfeed`: the records' change feed from
  LISTEN/NOTIFY, resynced after every reconnect.
- :mod:`headwater._cluster._message`: the message (a download holding a
  slot) and Dramatiq's Redis broker that carries it.
- :mod:`headwater._cluster._runner`: :class:`~headwater._cluster._runner.ClusterWorker`,
  which runs one message's download; :mod:`headwater._cluster._cancels`,
  how a cancel reaches it; :mod:`headwater._cluster._work`, the worker
  process (``headwater worker``); :mod:`headwater._cluster._gate`, holding
  a source still in one process (``freeze``).
- :mod:`headwater._cluster._setup`: what every process builds from its
  configuration (the Redis client, the loaded sources), and a cluster of
  its own for a test.
- :mod:`headwater._cluster._channel`: a thread listening on a Redis
  pub/sub channel through lost connections (the cancels, the slots given
  back).
- :mod:`headwater._cluster._engine`: :class:`~headwater._cluster._engine.ClusterEngine`,
  the engine ``Engine(..., cluster=...)`` makes: a program's submits,
  reads and cancels on the cluster.

Needs the ``cluster`` extra (``pip install 'headwater[cluster]'``).
"""
