-- Threats (actors, campaigns, malware, tools, intrusion sets), their IoC links,
-- and IoC-to-IoC relations.

CREATE TABLE IF NOT EXISTS threats (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('threat-actor', 'campaign', 'malware', 'tool', 'intrusion-set')),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    aliases     text[]      NOT NULL DEFAULT '{}',
    description text,
    confidence  smallint    CHECK (confidence BETWEEN 0 AND 100),
    severity    text        CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    first_seen  timestamptz,
    last_seen   timestamptz,
    -- "references" is a reserved word; the API calls this field references.
    refs        jsonb       NOT NULL DEFAULT '[]',
    ttps        text[]      NOT NULL DEFAULT '{}',
    tags        text[]      NOT NULL DEFAULT '{}',
    stix_id     text        UNIQUE,
    tlp         text        NOT NULL DEFAULT 'amber' CHECK (tlp IN ('clear', 'green', 'amber', 'amber+strict', 'red')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (first_seen IS NULL OR last_seen IS NULL OR first_seen <= last_seen)
);
CREATE UNIQUE INDEX IF NOT EXISTS threats_name_lower_key ON threats (lower(name));
CREATE INDEX IF NOT EXISTS threats_kind_id_idx ON threats (kind, id);
CREATE INDEX IF NOT EXISTS threats_ttps_gin ON threats USING gin (ttps);
CREATE INDEX IF NOT EXISTS threats_tags_gin ON threats USING gin (tags);

-- Every name and alias of every threat, keyed case-insensitively. The primary key
-- makes "two threats share a name or alias" impossible, and "which threat is
-- called X (by name or alias)" one index lookup. The trigger below keeps it in
-- step with threats.name/aliases, so no writer can forget it.
CREATE TABLE IF NOT EXISTS threat_names (
    name_key  text    PRIMARY KEY,
    threat_id bigint  NOT NULL REFERENCES threats (id) ON DELETE CASCADE,
    name      text    NOT NULL,
    is_alias  boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS threat_names_threat_idx ON threat_names (threat_id);

CREATE OR REPLACE FUNCTION threats_sync_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.name = OLD.name AND NEW.aliases = OLD.aliases THEN
        RETURN NEW;
    END IF;
    DELETE FROM threat_names WHERE threat_id = NEW.id;
    INSERT INTO threat_names (name_key, threat_id, name, is_alias)
    SELECT DISTINCT ON (lower(btrim(n.name))) lower(btrim(n.name)), NEW.id, btrim(n.name), n.ord > 0
    FROM unnest(ARRAY[NEW.name] || NEW.aliases) WITH ORDINALITY AS n(name, ord)
    WHERE btrim(n.name) <> ''
    ORDER BY lower(btrim(n.name)), n.ord;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS threats_sync_names_trg ON threats;
CREATE TRIGGER threats_sync_names_trg AFTER INSERT OR UPDATE OF name, aliases ON threats
    FOR EACH ROW EXECUTE FUNCTION threats_sync_names();

-- Threat <-> IoC links. relation is a STIX-like verb: indicates, uses, correlated...
CREATE TABLE IF NOT EXISTS threat_iocs (
    threat_id  bigint      NOT NULL REFERENCES threats (id) ON DELETE CASCADE,
    ioc_id     bigint      NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    relation   text        NOT NULL DEFAULT 'indicates' CHECK (relation ~ '^[a-z][a-z0-9-]{0,63}$'),
    confidence smallint    NOT NULL DEFAULT 50 CHECK (confidence BETWEEN 0 AND 100),
    source     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (threat_id, ioc_id, relation)
);
CREATE INDEX IF NOT EXISTS threat_iocs_ioc_idx ON threat_iocs (ioc_id, threat_id);

-- Directed IoC-to-IoC relations; several types per pair are allowed.
CREATE TABLE IF NOT EXISTS ioc_relations (
    source_id  bigint      NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    target_id  bigint      NOT NULL REFERENCES iocs (id) ON DELETE CASCADE,
    type       text        NOT NULL CHECK (type IN ('resolves-to', 'communicates-with', 'drops', 'downloads', 'related-to')),
    confidence smallint    NOT NULL DEFAULT 50 CHECK (confidence BETWEEN 0 AND 100),
    source     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, target_id, type),
    CHECK (source_id <> target_id)
);
CREATE INDEX IF NOT EXISTS ioc_relations_target_idx ON ioc_relations (target_id, source_id);
