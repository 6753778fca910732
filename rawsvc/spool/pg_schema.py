"""
The PostgreSQL spool's schema, versioned, and what names a database for
people (L{describe}, without its password).

L{migrate} brings a database to L{VERSION} at open: it holds a
transaction-scoped advisory lock while it reads the version and applies
the missing steps, so two nodes starting together do not race (the second
waits, then finds the schema made).  Each step of L{MIGRATIONS} runs once,
in one transaction with the version it reaches.

The tables follow the cluster design (C{shared/CLUSTER.md}): one row per
process start in C{rawsvc_nodes} (an I{incarnation}), the jobs with the
incarnation that runs them (C{owner}), payloads past L{INLINE_MAX} in
C{rawsvc_payload_chunks}, the CLI's requests.  Job times are the store's
clock (epoch seconds, C{double precision}); lease times are the
database's (C{timestamptz}).  Version 2 adds cluster mode's per-printer
tickets and delivery claims (L{rawsvc.cluster}).
"""

from __future__ import annotations

from typing import Any

#: Payloads up to this size are kept in the job's row; larger ones in chunks.
INLINE_MAX = 64 << 10
#: Bytes per row of C{rawsvc_payload_chunks}.
CHUNK = 256 << 10
#: Any constant of ours: the key of the advisory lock C{migrate} holds.
MIGRATION_LOCK = 0x72617773  # "raws"

_V1 = """
CREATE TABLE rawsvc_nodes (
  incarnation uuid PRIMARY KEY,
  node_name text NOT NULL,
  state text NOT NULL DEFAULT 'alive' CHECK (state IN ('alive', 'dead', 'left')),
  started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  lease_until timestamptz NOT NULL
);
CREATE INDEX rawsvc_nodes_by_name ON rawsvc_nodes (node_name) WHERE state = 'alive';

CREATE TABLE rawsvc_jobs (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id text NOT NULL UNIQUE,
  trigger text NOT NULL,
  flow text NOT NULL,
  state text NOT NULL CHECK (state IN ('queued', 'running', 'waiting', 'done', 'failed', 'cancelled')),
  owner uuid REFERENCES rawsvc_nodes (incarnation) ON DELETE SET NULL,
  peer_host text NOT NULL,
  peer_port integer NOT NULL,
  encoding text NOT NULL,
  size bigint NOT NULL,
  chunks integer NOT NULL DEFAULT 0,
  payload bytea,
  received_at double precision NOT NULL,
  action_index integer NOT NULL DEFAULT 0,
  attempt integer NOT NULL DEFAULT 1,
  variables jsonb NOT NULL DEFAULT '{}',
  queued_at double precision,
  started_at double precision,
  updated_at double precision,
  finished_at double precision,
  last_error text,
  destination text,
  bytes_delivered bigint NOT NULL DEFAULT 0,
  delivery_attempt integer NOT NULL DEFAULT 0,
  next_try double precision
);
CREATE INDEX rawsvc_jobs_unfinished ON rawsvc_jobs (seq) WHERE state IN ('queued', 'running', 'waiting');
CREATE INDEX rawsvc_jobs_finished ON rawsvc_jobs (finished_at) WHERE state IN ('done', 'failed', 'cancelled');
CREATE INDEX rawsvc_jobs_owner ON rawsvc_jobs (owner, seq) WHERE owner IS NOT NULL;

CREATE TABLE rawsvc_payload_chunks (
  job_id text NOT NULL REFERENCES rawsvc_jobs (job_id) ON DELETE CASCADE,
  n integer NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (job_id, n)
);

CREATE TABLE rawsvc_requests (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id text NOT NULL,
  action text NOT NULL CHECK (action IN ('retry', 'cancel')),
  asked_at double precision NOT NULL,
  answered_at double precision,
  ok boolean,
  result text
);
CREATE INDEX rawsvc_requests_open ON rawsvc_requests (id) WHERE answered_at IS NULL;
"""

# Cluster mode (L{rawsvc.cluster}): per-printer tickets and delivery claims.
_V2 = """
CREATE TABLE rawsvc_destinations (
  destination text PRIMARY KEY,
  next_ticket bigint NOT NULL DEFAULT 1
);

CREATE TABLE rawsvc_deliveries (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id text NOT NULL,
  action_index integer NOT NULL,
  destination text NOT NULL REFERENCES rawsvc_destinations (destination),
  ticket bigint NOT NULL,
  state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending', 'done', 'failed')),
  holder uuid,
  fence bigint NOT NULL DEFAULT 0,
  claims integer NOT NULL DEFAULT 0,
  settings jsonb NOT NULL DEFAULT '{}',
  data bytea,
  result jsonb,
  queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  claimed_at timestamptz,
  finished_at timestamptz,
  UNIQUE (job_id, action_index),
  UNIQUE (destination, ticket)
);
CREATE UNIQUE INDEX rawsvc_one_sending_per_destination ON rawsvc_deliveries (destination) WHERE state = 'sending';
CREATE INDEX rawsvc_open_by_destination ON rawsvc_deliveries (destination, ticket)
  WHERE state IN ('queued', 'sending');
CREATE INDEX rawsvc_deliveries_by_holder ON rawsvc_deliveries (holder) WHERE state = 'sending';
CREATE INDEX rawsvc_nodes_alive ON rawsvc_nodes (lease_until) WHERE state = 'alive';
"""

#: Version 3: a job's C{run} (bumped by each operator retry or reprint) is part of its deliveries'
#: key, so that running a job again sends again, while a resumed or adopted run finds its rows;
#: C{cancel_asked}: an operator's cancel of a delivery another node is sending, for its holder.
_V3 = """
ALTER TABLE rawsvc_jobs ADD COLUMN run integer NOT NULL DEFAULT 0;
ALTER TABLE rawsvc_deliveries ADD COLUMN run integer NOT NULL DEFAULT 0;
ALTER TABLE rawsvc_deliveries DROP CONSTRAINT rawsvc_deliveries_job_id_action_index_key;
ALTER TABLE rawsvc_deliveries ADD CONSTRAINT rawsvc_deliveries_job_run_action_key UNIQUE (job_id, run, action_index);
ALTER TABLE rawsvc_deliveries ADD COLUMN cancel_asked boolean NOT NULL DEFAULT false;
"""

#: Version N is reached by running C{MIGRATIONS[N - 1]}.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
VERSION = len(MIGRATIONS)


class NewerSchema(Exception):
    """The database was made by a newer rawsvc (its version is past L{VERSION})."""


def migrate(conn: Any) -> tuple[int, int]:
    """
    Bring the database of C{conn} (a psycopg connection, not in a
    transaction) to L{VERSION}; fires nothing, returns C{(version found,
    version now)}.  Raises L{NewerSchema} for a database of a newer rawsvc.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS rawsvc_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM rawsvc_schema").fetchone()
        found = row[0] if row else 0
        if row is None:
            conn.execute("INSERT INTO rawsvc_schema (version) VALUES (0)")
        if found > VERSION:
            raise NewerSchema(f"the database holds spool schema version {found}, this rawsvc knows up to {VERSION}:"
                              " upgrade rawsvc")
        for version in range(found + 1, VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("UPDATE rawsvc_schema SET version = %s", (version,))
    return found, VERSION


def is_pg_uri(value: Any) -> bool:
    """True for a libpq URI (C{postgresql://...} or C{postgres://...})."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def describe(dsn: str) -> str:
    """
    The database C{dsn} names, for people: C{postgresql://user@host:port/db}
    (with C{?sslmode=...} when given), never its password.
    """
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "a PostgreSQL database (its address cannot be read)"
    user = params.get("user")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    db = params.get("dbname") or user or ""
    text = "postgresql://" + (f"{user}@" if user else "") + str(host) + (f":{port}" if port else "") + f"/{db}"
    if params.get("sslmode"):
        text += f"?sslmode={params['sslmode']}"
    return text


def reason(error: BaseException) -> str:
    """A psycopg error's message for people: its first line, without libpq's C{connection failed:} prefix."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    for prefix in ("connection failed: ", "FATAL:  ", "ERROR:  "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.replace('"', "")
