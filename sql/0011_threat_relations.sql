-- Directed threat-to-threat relations (an intrusion set `uses` a malware, a campaign is `attributed-to` an
-- intrusion set, a malware is a `variant-of` another): STIX relationships between two threats, which imports
-- counted in `skipped` and lost. Verbs are free but tidy, as threat_iocs' are; a pair holds at most 8 of them
-- (threats.model.MAX_RELATIONS_PER_LINK, enforced under the source threat's row lock).
CREATE TABLE IF NOT EXISTS threat_relations (
    source_id  bigint      NOT NULL REFERENCES threats (id) ON DELETE CASCADE,
    target_id  bigint      NOT NULL REFERENCES threats (id) ON DELETE CASCADE,
    type       text        NOT NULL CHECK (type ~ '^[a-z][a-z0-9-]{0,63}$'),
    confidence smallint    NOT NULL DEFAULT 50 CHECK (confidence BETWEEN 0 AND 100),
    source     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, target_id, type),
    CHECK (source_id <> target_id)
);
CREATE INDEX IF NOT EXISTS threat_relations_target_idx ON threat_relations (target_id, source_id);
