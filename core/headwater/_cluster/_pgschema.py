"""The records of a cluster in PostgreSQL: the schema, its migrations, and opening it safely.

Everything lives in one PostgreSQL schema (``headwater`` unless told
otherwise), so that several clusters, or tests, share a database without
meeting:

- ``records``: one row per download. ``id``, ``source``, ``state``,
  ``attempts``, ``owner`` (the store session whose unfinished record it
  is), ``created_at`` and ``updated_at`` are columns the queries use;
  ``data`` (jsonb) is the whole record. ``version`` counts the row's
  visible changes (progress is not one); ``stamp`` names the transaction
  that wrote it last, so that a write retried after a lost reply knows it
  was applied (:mod:`headwater._cluster._pgstore`).
- ``changes``: every visible change (a new row, a change that moves
  ``version``, a removal) appended by a trigger in the writing transaction,
  with the transaction's id (``xact``). The same trigger sends a NOTIFY on
  the channel :func:`channel`; a listener that missed some reads them here
  (:mod:`headwater._cluster._pgfeed`). Pruned after a retention time.
- ``paused``: the paused sources. ``meta``: which program the schema
  belongs to, its version, how far ``changes`` were pruned.

Opening is safe with any number of processes at once: the version is read,
and only if a migration is due is it read again and the migration run in
one transaction under ``pg_advisory_xact_lock``, so exactly one process
migrates. A schema that holds tables of another program, or that a newer
headwater wrote, is refused and never changed.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from headwater._errors import StoreError

#: The schema version this code writes (``meta.schema_version``).
SCHEMA_VERSION = 1

#: Longest schema name: the channel ``headwater.<schema>`` must fit PostgreSQL's 63 bytes.
MAX_SCHEMA = 53

#: The biggest NOTIFY payload sent whole; a larger change sends its ``seq`` only
#: (PostgreSQL refuses payloads of 8000 bytes and over).
MAX_PAYLOAD = 7900


def channel(schema: str) -> str:
    """The NOTIFY channel of the changes of ``schema``."""
    return f"headwater.{schema}"


def check_name(schema: str) -> None:
    """ValueError unless ``schema`` can name a records schema."""
    if not schema or len(schema.encode()) > MAX_SCHEMA or "\x00" in schema:
        raise ValueError(f"a schema name of 1 to {MAX_SCHEMA} bytes expected, got {schema!r}")


def migrations(schema: str) -> dict[int, tuple[sql.Composed, ...]]:
    """The statements that bring ``schema`` from version ``n - 1`` to ``n``; version 1 creates it all."""
    s = sql.Identifier(schema)
    name = sql.Literal(channel(schema))
    size = sql.Literal(MAX_PAYLOAD)
    return {
        1: (
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
            sql.SQL(
                """CREATE TABLE {}.records (
                    id text COLLATE "C" PRIMARY KEY,
                    source text COLLATE "C" NOT NULL,
                    state text NOT NULL,
                    attempts integer NOT NULL,
                    owner text NOT NULL,
                    created_at double precision NOT NULL,
                    updated_at double precision NOT NULL,
                    data jsonb NOT NULL,
                    version bigint NOT NULL DEFAULT 1,
                    stamp bigint NOT NULL DEFAULT 0
                )"""
            ).format(s),
            # Pages latest first: of everything, of some states, and of some sources, a part per
            # state and source (an empty pair is an empty range, not a walk through the state's
            # rows); the takeover reads the unfinished records of its sources the same way.
            sql.SQL("CREATE INDEX records_by_time ON {}.records (created_at, id)").format(s),
            sql.SQL("CREATE INDEX records_by_state ON {}.records (state, created_at, id)").format(s),
            sql.SQL(
                "CREATE INDEX records_by_state_source ON {}.records (state, source, created_at, id)"
            ).format(s),
            sql.SQL('CREATE TABLE {}.paused (source text COLLATE "C" PRIMARY KEY)').format(s),
            sql.SQL(
                """CREATE TABLE {}.changes (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    xact xid8 NOT NULL DEFAULT pg_current_xact_id(),
                    at timestamptz NOT NULL DEFAULT now(),
                    kind text NOT NULL,
                    id text COLLATE "C" NOT NULL,
                    version bigint NOT NULL,
                    data jsonb NOT NULL
                )"""
            ).format(s),
            sql.SQL("CREATE INDEX changes_by_xact ON {}.changes (xact)").format(s),
            sql.SQL("CREATE INDEX changes_by_time ON {}.changes USING brin (at)").format(s),
            sql.SQL("CREATE TABLE {}.meta (key text PRIMARY KEY, value text NOT NULL)").format(s),
            sql.SQL("INSERT INTO {}.meta VALUES ('application', 'headwater'), ('pruned_xact', '0')").format(
                s
            ),
            # One row per change; the payload is JSON: k (r: record, d: removed), s (seq), x (xact),
            # id, and data unless that would make it too long for NOTIFY.
            sql.SQL(
                """CREATE FUNCTION {s}.feed() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE
                    row {s}.records;
                    kind text := 'r';
                    n bigint;
                    x xid8;
                    head text;
                    body text;
                BEGIN
                    IF TG_OP = 'DELETE' THEN row := OLD; kind := 'd'; ELSE row := NEW; END IF;
                    INSERT INTO {s}.changes (kind, id, version, data)
                        VALUES (kind, row.id, row.version, row.data) RETURNING seq, xact INTO n, x;
                    head := json_build_object('k', kind, 's', n, 'x', x::text, 'id', row.id)::text;
                    body := row.data::text;
                    IF octet_length(head) + octet_length(body) < {size} THEN
                        head := left(head, -1) || ', "data" : ' || body || '}}';
                    END IF;
                    PERFORM pg_notify({name}, head);
                    RETURN NULL;
                END $$"""
            ).format(s=s, name=name, size=size),
            sql.SQL(
                "CREATE TRIGGER records_added AFTER INSERT ON {s}.records FOR EACH ROW "
                "EXECUTE FUNCTION {s}.feed()"
            ).format(s=s),
            sql.SQL(
                "CREATE TRIGGER records_changed AFTER UPDATE ON {s}.records FOR EACH ROW "
                "WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION {s}.feed()"
            ).format(s=s),
            sql.SQL(
                "CREATE TRIGGER records_removed AFTER DELETE ON {s}.records FOR EACH ROW "
                "EXECUTE FUNCTION {s}.feed()"
            ).format(s=s),
        ),
    }


def open_schema(conn: psycopg.Connection[tuple[object, ...]], schema: str, where: str) -> None:
    """Make sure ``schema`` holds this version's records, creating or migrating it if needed.

    ``conn`` is in autocommit mode; ``where`` names the server in messages
    (its masked URL). Raises StoreError if the schema belongs to another
    program or a newer headwater; psycopg's errors pass through.
    """
    version = _version(conn, schema, where)
    if version == SCHEMA_VERSION:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"headwater schema {schema}",))
        version = _version(conn, schema, where)  # again, under the lock: the latest word
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in migrations(schema)[step]:
                conn.execute(statement)
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.meta VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE SET value = %s"
            ).format(sql.Identifier(schema)),
            (str(SCHEMA_VERSION), str(SCHEMA_VERSION)),
        )


def _version(conn: psycopg.Connection[tuple[object, ...]], schema: str, where: str) -> int:
    """The version of ``schema`` (0: absent or empty); StoreError if foreign or newer."""
    found = conn.execute(
        "SELECT count(*) FILTER (WHERE c.relname = 'meta'), count(*) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v')",
        (schema,),
    ).fetchone()
    assert found is not None  # an aggregate always answers
    meta, tables = found
    if not tables:
        return 0
    values: dict[str, str] = {}
    if meta:
        rows = conn.execute(sql.SQL("SELECT key, value FROM {}.meta").format(sql.Identifier(schema)))
        values = {str(k): str(v) for k, v in rows}
    if values.get("application") != "headwater":
        raise StoreError(
            f"schema {schema!r} at {where} holds tables of another program; "
            "headwater leaves it alone (name another schema)"
        )
    version = int(values.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema {schema!r} at {where} was written by a newer headwater (schema {version}, "
            f"this one knows up to {SCHEMA_VERSION}); upgrade headwater"
        )
    return version
