"""The SQL of :class:`~headwater._cluster._pgstore.PostgresStore`: its statements, and its page queries.

Built once per store, for its schema. The rows come and go as arrays
(``unnest``), so that a batch of any size is one statement.
"""

from __future__ import annotations

from collections.abc import Collection

from headwater._records import State

#: The unfinished states, in SQL.
UNFINISHED = "('queued', 'running')"

_TERMINAL = tuple(s.value for s in State if s.terminal)


def quoted(schema: str) -> str:
    """``schema`` as an SQL identifier."""
    return '"' + schema.replace('"', '""') + '"'


def page_query(
    records: str,
    states: Collection[State] | None,
    sources: Collection[str] | None,
    below: tuple[float, str] | None,
    limit: int,
    *,
    ended_only: bool,
    ascending: bool = False,
) -> tuple[str, list[object]] | None:
    """The query (and its parameters) of up to ``limit`` rows of ``records``, latest first, below ``below``.

    With ``ascending``, oldest first and above ``below`` instead. Only
    rows in one of ``states`` and of one of ``sources`` (None: any), and
    with ``ended_only`` only terminal ones; None when no row can match. A
    part per state and source, each a range of an index read from the
    cursor on (``records_by_time``, ``records_by_state``,
    ``records_by_state_source``), merged. Rows are (id, created_at, data as
    JSON text).
    """
    keys: list[str | None] | None = None
    if states is not None:
        keys = [s.value for s in states if s.terminal or not ended_only]
    elif ended_only:
        keys = list(_TERMINAL)
    elif sources is not None:
        keys = [s.value for s in State]  # a part per state and source: records_by_state_source
    if limit <= 0 or keys == [] or (sources is not None and not sources):
        return None
    parts: list[str] = []
    params: list[object] = []
    past, order = (">", "ASC") if ascending else ("<", "DESC")
    for state in keys or [None]:
        for source in [None] if sources is None else sorted(sources):
            where = []
            for column, value in (("state", state), ("source", source)):
                if value is not None:
                    where.append(f"{column} = %s")
                    params.append(value)
            if below is not None:
                where.append(f"(created_at, id) {past} (%s, %s)")
                params.extend(below)
            parts.append(
                f"(SELECT id, created_at, data::text FROM {records} "
                f"WHERE {' AND '.join(where) or 'true'} ORDER BY created_at {order}, id {order} LIMIT %s)"
            )
            params.append(limit)
    if len(parts) == 1:
        return parts[0], params
    return f"{' UNION ALL '.join(parts)} ORDER BY created_at {order}, id {order} LIMIT %s", [*params, limit]


_FROM = """unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::float8[], %s::float8[], %s::text[])
    WITH ORDINALITY AS w(id, source, state, attempts, created_at, updated_at, data, n)"""


class Statements:
    """The store's SQL, for the schema ``s`` (quoted); built once per store."""

    def __init__(self, s: str) -> None:
        self.records = f"{s}.records"
        self.insert = f"""INSERT INTO {s}.records
                (id, source, state, attempts, owner, created_at, updated_at, data)
            SELECT w.id, w.source, w.state, w.attempts, o.owner, w.created_at, w.updated_at, w.data::jsonb
            FROM {_FROM}, (SELECT %s::text AS owner) AS o ORDER BY w.n ON CONFLICT (id) DO NOTHING"""
        self.upsert = f"""INSERT INTO {s}.records AS r
                (id, source, state, attempts, owner, created_at, updated_at, data, stamp)
            SELECT w.id, w.source, w.state, w.attempts, o.owner, w.created_at, w.updated_at,
                w.data::jsonb, o.stamp
            FROM {_FROM}, (SELECT %s::text AS owner, %s::bigint AS stamp) AS o ORDER BY w.n
            ON CONFLICT (id) DO UPDATE SET source = excluded.source, state = excluded.state,
                attempts = excluded.attempts, owner = excluded.owner, updated_at = excluded.updated_at,
                data = excluded.data, version = r.version + 1, stamp = excluded.stamp
            WHERE r.stamp <> excluded.stamp"""
        # The last SELECT sees the rows as they were before the statement: a row that
        # already holds this call's stamp was written by an earlier try of it.
        self.swap = f"""WITH w AS MATERIALIZED (
                SELECT w.*, s.seen, s.tries FROM {_FROM}
                JOIN unnest(%s::text[], %s::int[]) WITH ORDINALITY AS s(seen, tries, n) ON s.n = w.n
            ), done AS (
                UPDATE {s}.records AS r SET source = w.source, state = w.state, attempts = w.attempts,
                    updated_at = w.updated_at, data = w.data::jsonb, version = r.version + 1, stamp = %s
                FROM w WHERE r.id = w.id AND r.stamp <> %s AND CASE WHEN w.seen IS NULL
                    THEN r.state IN {UNFINISHED} ELSE r.state = w.seen AND r.attempts = w.tries END
                RETURNING r.id
            )
            SELECT coalesce(array_agg(d.id IS NOT NULL OR coalesce(r.stamp = %s, false) ORDER BY w.n), '{{}}')
            FROM w LEFT JOIN done d ON d.id = w.id LEFT JOIN {s}.records r ON r.id = w.id"""
        # QUEUED at the attempts seen -> RUNNING at the next, the record built here from the row
        # (the fields a worker's start sets; its folder unless the record names one).
        self.start = f"""WITH w AS MATERIALIZED (
                SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::float8[])
                    WITH ORDINALITY AS w(id, seen, dest, at, n)
            ), done AS (
                UPDATE {s}.records AS r SET state = 'running', attempts = w.seen + 1, updated_at = w.at,
                    data = r.data || jsonb_build_object('state', 'running', 'attempts', w.seen + 1,
                        'started_at', w.at, 'updated_at', w.at,
                        'dest_dir', coalesce(nullif(r.data->>'dest_dir', ''), w.dest)),
                    version = r.version + 1, stamp = %s
                FROM w WHERE r.id = w.id AND r.stamp <> %s AND r.state = 'queued' AND r.attempts = w.seen
                RETURNING r.id, r.data::text AS data
            )
            SELECT coalesce(d.data, CASE WHEN r.stamp = %s THEN r.data::text END)
            FROM w LEFT JOIN done d ON d.id = w.id LEFT JOIN {s}.records r ON r.id = w.id ORDER BY w.n"""
        self.progress = f"""UPDATE {s}.records SET data = %s::jsonb
            WHERE id = %s AND state = 'running' AND attempts = %s AND updated_at = %s"""
        self.delete = f"DELETE FROM {s}.records WHERE id = %s"
        # The locks of the sessions taken from are held until the statement's transaction ends.
        self.take_over = f"""WITH candidates AS MATERIALIZED (
                SELECT DISTINCT owner FROM {s}.records
                WHERE state IN {UNFINISHED} AND source = ANY(%(sources)s) AND owner <> %(me)s
            ), dead AS MATERIALIZED (
                SELECT owner FROM candidates WHERE pg_try_advisory_xact_lock(hashtextextended(owner, 0))
            )
            UPDATE {s}.records SET owner = %(me)s, stamp = %(stamp)s
            WHERE state IN {UNFINISHED} AND source = ANY(%(sources)s)
                AND (owner IN (SELECT owner FROM dead) OR (owner = %(me)s AND stamp = %(stamp)s))
            RETURNING id, created_at, data::text"""
        self.lock_row = f"SELECT owner, stamp, data::text FROM {s}.records WHERE id = %s FOR UPDATE"
        self.try_lock = "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
        self.cancel = f"""UPDATE {s}.records SET state = 'cancelled', updated_at = %s, data = %s::jsonb,
            version = version + 1, stamp = %s WHERE id = %s"""
        self.load = f"""SELECT id, created_at, data::text FROM {s}.records
            WHERE state NOT IN {UNFINISHED} ORDER BY created_at, id"""
        self.get = f"SELECT data::text FROM {s}.records WHERE id = %s"
        self.fetch = f"SELECT id, created_at, data::text FROM {s}.records WHERE id = ANY(%s)"
        self.states = f"SELECT id, state FROM {s}.records WHERE id = ANY(%s)"
        # The ids that start or end with a key: every id looked at once, two kept at most.
        self.matches = f"""SELECT id FROM {s}.records
            WHERE left(id, length(%(key)s)) = %(key)s OR right(id, length(%(key)s)) = %(key)s LIMIT 2"""
        # The records whose ids start or end with a key, latest first; then only the ended ones.
        named = f"""SELECT id, created_at, data::text FROM {s}.records
            WHERE (left(id, length(%(key)s)) = %(key)s OR right(id, length(%(key)s)) = %(key)s)"""
        latest = "ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
        self.named = f"{named} {latest}"
        self.named_ended = f"{named} AND state NOT IN {UNFINISHED} {latest}"
        self.cursor = f"SELECT created_at, id FROM {s}.records WHERE id = %s"
        self.paused = f"SELECT source FROM {s}.paused ORDER BY source"
        self.pause = f"INSERT INTO {s}.paused (source) VALUES (%s) ON CONFLICT DO NOTHING"
        self.resume = f"DELETE FROM {s}.paused WHERE source = %s"
        self.prune = f"""WITH gone AS (
                DELETE FROM {s}.changes WHERE at < now() - make_interval(secs => %s) RETURNING xact
            )
            UPDATE {s}.meta SET value = greatest(value::xid8, (SELECT max(xact) FROM gone))::text
            WHERE key = 'pruned_xact'"""
