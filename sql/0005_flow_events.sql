-- Flow events: every ingested network flow, scored, partitioned by day on event_time.
--
-- event_time is the flow's stime when it has one, else the time the batch was
-- observed. event_key is deterministic (file hash + row, or batch hash + index),
-- so re-sending a batch inserts nothing twice: (event_time, event_key) is the key.
-- `features` holds the model's numeric inputs in the partitioned UNSW-NB15 order
-- listed in threatflow/flows/repository.py (STORED_FEATURES), as float4 — the
-- precision the model reads them at — so stored labelled events can be retrained on.
CREATE TABLE IF NOT EXISTS flow_events (
    event_time       timestamptz NOT NULL,
    event_key        uuid        NOT NULL,
    srcip            inet,
    sport            integer CHECK (sport BETWEEN 0 AND 65535),
    dstip            inet,
    dsport           integer CHECK (dsport BETWEEN 0 AND 65535),
    proto            text        NOT NULL,
    service          text        NOT NULL,
    state            text        NOT NULL,
    stime            timestamptz,
    ltime            timestamptz,
    dur              real,
    sbytes           bigint,
    dbytes           bigint,
    spkts            integer,
    dpkts            integer,
    features         real[]      NOT NULL,
    label            smallint CHECK (label IN (0, 1)),
    attack_cat       text,
    predicted_attack boolean     NOT NULL,
    probability      real        NOT NULL CHECK (probability BETWEEN 0 AND 1),
    predicted_cat    text        NOT NULL,
    model_version    text        NOT NULL,
    source           text        NOT NULL DEFAULT 'api',
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_time, event_key)
) PARTITION BY RANGE (event_time);

-- Search by address: newest first, keyset on (event_time, event_key). INCLUDE makes
-- the listing an index-only scan (no heap visit per row) for the columns it returns.
CREATE INDEX IF NOT EXISTS flow_events_src_time_idx ON flow_events (srcip, event_time DESC, event_key DESC)
    INCLUDE (dstip, sport, dsport, proto, service, state, sbytes, dbytes, label, attack_cat,
             predicted_attack, probability, predicted_cat, model_version);
CREATE INDEX IF NOT EXISTS flow_events_dst_time_idx ON flow_events (dstip, event_time DESC, event_key DESC)
    INCLUDE (srcip, sport, dsport, proto, service, state, sbytes, dbytes, label, attack_cat,
             predicted_attack, probability, predicted_cat, model_version);
-- Listing without an address (time range + filters) walks time; BRIN would be smaller
-- but cannot serve ORDER BY ... LIMIT.
CREATE INDEX IF NOT EXISTS flow_events_time_idx ON flow_events (event_time DESC, event_key DESC);

-- Daily partitions, named flow_events_pYYYYMMDD. Created ahead by the flow-retention
-- job and on demand by ingest (both call this). Concurrent creators of the same day
-- queue on one advisory lock; the one that loses the race sees "already exists"
-- (its catalog cache may predate the winner's commit) and takes that as done.
CREATE OR REPLACE FUNCTION flow_events_ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := format('flow_events_p%s', to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('flow_events_partitions'));
    BEGIN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF flow_events FOR VALUES FROM (%L) TO (%L)',
            name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        NULL;  -- created by a concurrent caller
    END;
    RETURN name;
END
$$;

-- Hourly roll-ups the dashboards read, over any window: sum the hours in it.
-- Refreshed CONCURRENTLY by the refresh-flow-views job (readers never block), which
-- needs a unique index on each view.
CREATE MATERIALIZED VIEW IF NOT EXISTS flow_attack_categories_hourly AS
SELECT date_trunc('hour', event_time) AS hour,
       predicted_cat,
       count(*)::bigint AS events,
       count(DISTINCT srcip)::bigint AS sources,
       count(*) FILTER (WHERE label = 1)::bigint AS labelled_attacks
FROM flow_events
WHERE predicted_attack
GROUP BY 1, 2
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS flow_attack_categories_hourly_key ON flow_attack_categories_hourly (hour, predicted_cat);

CREATE MATERIALIZED VIEW IF NOT EXISTS flow_bytes_by_proto_hourly AS
SELECT date_trunc('hour', event_time) AS hour,
       proto,
       count(*)::bigint AS events,
       COALESCE(sum(sbytes), 0)::bigint AS sbytes,
       COALESCE(sum(dbytes), 0)::bigint AS dbytes,
       count(*) FILTER (WHERE predicted_attack)::bigint AS attack_events
FROM flow_events
GROUP BY 1, 2
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS flow_bytes_by_proto_hourly_key ON flow_bytes_by_proto_hourly (hour, proto);

-- A first, non-concurrent refresh makes the views readable (CONCURRENTLY needs populated views).
REFRESH MATERIALIZED VIEW flow_attack_categories_hourly;
REFRESH MATERIALIZED VIEW flow_bytes_by_proto_hourly;

-- When each view was last refreshed, so the API can say how fresh its figures are.
CREATE TABLE IF NOT EXISTS flow_view_refreshes (
    view_name    text PRIMARY KEY,
    refreshed_at timestamptz NOT NULL,
    took_ms      integer     NOT NULL
);
