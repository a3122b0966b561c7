-- Enrichment: one result row per (run, source), the per-source result cache,
-- the evidence correlation reads, and the IoC's merged verdict with its reasons.
CREATE TABLE IF NOT EXISTS enrichment_results (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text        NOT NULL,
    ioc_id      bigint      NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    source      text        NOT NULL,
    status      text        NOT NULL,
    verdict     text        NOT NULL DEFAULT 'unknown',
    score       smallint    CHECK (score BETWEEN 0 AND 100),
    evidence    jsonb       NOT NULL DEFAULT '{}',
    detail      text        NOT NULL DEFAULT '',
    cached      boolean     NOT NULL DEFAULT false,
    fetched_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, source)  -- a redelivered task writes nothing new
);
CREATE INDEX IF NOT EXISTS enrichment_results_ioc_idx ON enrichment_results (ioc_id, source, created_at DESC);

-- The second cache level behind Redis: the last usable answer per source and IoC.
CREATE TABLE IF NOT EXISTS enrichment_cache (
    source      text        NOT NULL,
    ioc_type    text        NOT NULL,
    value       text        NOT NULL,
    result      jsonb       NOT NULL,
    fetched_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (source, ioc_type, value)
);

-- Evidence rows threat correlation reads (threats/correlate.py): families, actors, tags.
CREATE TABLE IF NOT EXISTS ioc_evidence (
    ioc_id  bigint NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    source  text   NOT NULL,
    kind    text   NOT NULL,
    value   text   NOT NULL,
    PRIMARY KEY (ioc_id, source, kind, value)
);
CREATE INDEX IF NOT EXISTS ioc_evidence_value_trgm ON ioc_evidence USING gin (value gin_trgm_ops);

-- The merged verdict of the latest closed run, with every contributing source and reason.
CREATE TABLE IF NOT EXISTS ioc_enrichment (
    ioc_id      bigint      PRIMARY KEY REFERENCES iocs (id) ON DELETE CASCADE,
    run_id      text        NOT NULL,
    verdict     text        NOT NULL,
    score       smallint,
    reasons     jsonb       NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Batches: which run answers which IoC (runs answered from the cache carry their verdict).
CREATE TABLE IF NOT EXISTS enrichment_batches (
    batch_id    text        PRIMARY KEY,
    runs        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
