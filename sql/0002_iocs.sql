-- Indicators of compromise: one row per canonical (type, value).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Per-type lifetime and decay (MISP-style polynomial decay), editable by admins.
CREATE TABLE IF NOT EXISTS ioc_type_policies (
    type              text PRIMARY KEY,
    ttl_days          integer  NOT NULL CHECK (ttl_days > 0),
    decay_lifetime_days integer NOT NULL CHECK (decay_lifetime_days > 0),
    decay_speed       real     NOT NULL CHECK (decay_speed > 0),
    expired_below     smallint NOT NULL DEFAULT 0 CHECK (expired_below BETWEEN 0 AND 100),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ioc_type_policies (type, ttl_days, decay_lifetime_days, decay_speed, expired_below) VALUES
    ('ipv4', 30, 60, 2.0, 10),       -- addresses are re-assigned quickly: decay fast
    ('ipv6', 30, 60, 2.0, 10),
    ('cidr', 90, 180, 1.5, 10),
    ('domain', 90, 180, 1.5, 10),
    ('url', 30, 90, 1.5, 10),
    ('email', 180, 365, 1.0, 10),
    ('md5', 365, 730, 0.5, 0),       -- a file hash never stops meaning the same file
    ('sha1', 365, 730, 0.5, 0),
    ('sha256', 365, 730, 0.5, 0),
    ('file_path', 180, 365, 1.0, 10)
ON CONFLICT (type) DO NOTHING;

CREATE TABLE IF NOT EXISTS iocs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type            text        NOT NULL REFERENCES ioc_type_policies (type),
    value           text        NOT NULL CHECK (length(value) BETWEEN 1 AND 8192),
    tags            text[]      NOT NULL DEFAULT '{}',
    sources         text[]      NOT NULL DEFAULT '{}',
    tlp             text        NOT NULL DEFAULT 'amber' CHECK (tlp IN ('clear', 'green', 'amber', 'amber+strict', 'red')),
    confidence      smallint    NOT NULL DEFAULT 50 CHECK (confidence BETWEEN 0 AND 100),
    verdict         text        NOT NULL DEFAULT 'unknown' CHECK (verdict IN ('malicious', 'suspicious', 'harmless', 'unknown')),
    base_score      smallint    NOT NULL DEFAULT 50 CHECK (base_score BETWEEN 0 AND 100),
    score           smallint    NOT NULL DEFAULT 50 CHECK (score BETWEEN 0 AND 100),
    severity        text        NOT NULL DEFAULT 'medium' CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    -- Indexed instead of last_seen: a re-sighting on the same day leaves every
    -- indexed column unchanged, so PostgreSQL can update the row in place (HOT).
    last_seen_day   date        NOT NULL,
    detection_count integer     NOT NULL DEFAULT 1 CHECK (detection_count >= 0),
    expires_at      timestamptz,
    active          boolean     NOT NULL DEFAULT true,
    warninglists    text[]      NOT NULL DEFAULT '{}',
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (type, value)
) WITH (fillfactor = 70);  -- room on each page for HOT updates on re-sighting

-- Keyset pagination walks id descending; each indexed filter pairs with id.
CREATE INDEX IF NOT EXISTS iocs_type_id_idx ON iocs (type, id);
CREATE INDEX IF NOT EXISTS iocs_verdict_id_idx ON iocs (verdict, id);
CREATE INDEX IF NOT EXISTS iocs_severity_id_idx ON iocs (severity, id);
CREATE INDEX IF NOT EXISTS iocs_tlp_id_idx ON iocs (tlp, id);
CREATE INDEX IF NOT EXISTS iocs_score_idx ON iocs (score, id);
CREATE INDEX IF NOT EXISTS iocs_last_seen_day_idx ON iocs (last_seen_day, id);
CREATE INDEX IF NOT EXISTS iocs_first_seen_idx ON iocs (first_seen, id);
CREATE INDEX IF NOT EXISTS iocs_expires_active_idx ON iocs (expires_at) WHERE active;
CREATE INDEX IF NOT EXISTS iocs_inactive_id_idx ON iocs (id) WHERE NOT active;
CREATE INDEX IF NOT EXISTS iocs_tags_gin ON iocs USING gin (tags);
CREATE INDEX IF NOT EXISTS iocs_sources_gin ON iocs USING gin (sources);
CREATE INDEX IF NOT EXISTS iocs_value_prefix_idx ON iocs (value text_pattern_ops);
CREATE INDEX IF NOT EXISTS iocs_value_trgm ON iocs USING gin (value gin_trgm_ops);

-- Every sighting, so detection counts are explainable and nothing is silently merged away.
CREATE TABLE IF NOT EXISTS ioc_sightings (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ioc_id     bigint      NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    seen_at    timestamptz NOT NULL,
    source     text,
    context    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ioc_sightings_ioc_idx ON ioc_sightings (ioc_id, seen_at DESC);

-- Import jobs for large inputs; the job document lives in Firestore, this is the audit trail.
CREATE TABLE IF NOT EXISTS ioc_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action     text        NOT NULL,
    actor      text,
    detail     jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
