-- Link and relation verbs stored with a separator at their end. Until check_relation_verb dropped the spaces,
-- underscores and hyphens at either end of a verb, `uses-` and `uses_` were stored as the verb `uses-` (and `uses--`
-- as itself): a second verb beside `uses` for the same pair, shown apart, counted against the pair's 8
-- (MAX_RELATIONS_PER_LINK) and left in place by an unlink of `uses`. Each is rewritten as check_relation_verb reads it
-- today and merged into the row of that verb where the pair holds it too.
--
-- What could be stored: threat_iocs.relation and threat_relations.type have had CHECK (~ '^[a-z][a-z0-9-]{0,63}$')
-- since their tables were made (0003, 0011), whatever wrote them. On such a value check_relation_verb's lower() and
-- strip() change nothing, nothing is at its start to drop (a letter), its inner runs are hyphens alone (kept), so it
-- only drops the hyphens at its end: rtrim(verb, '-'), which still passes the CHECK (a letter first, shorter).
-- tests/unit/threats/test_relation_verbs.py checks that premise on values the CHECK admits. ioc_relations.type is
-- CHECKed against five fixed tidy types, none ending in a hyphen: nothing to do there.
--
-- Merged: the higher confidence, the stricter TLP, the earlier created_at and the source of the earliest row naming
-- one. Set-based, one statement a table: the untidy rows are deleted and returned, grouped with the tidy row of their
-- verb (if any) and upserted, so several untidy spellings of one verb (`drops-`, `drops--`) become one row. The
-- upsert takes GREATEST / tlp_stricter / LEAST of what it meets, so a tidy row written meanwhile keeps what it has.
-- Only the untidy rows and their tidy rows are locked; the one scan is for the untidy rows (no index serves a
-- suffix). Run again, it finds nothing.

WITH untidy AS (
    DELETE FROM threat_iocs WHERE right(relation, 1) = '-'
    RETURNING threat_id, ioc_id, rtrim(relation, '-') AS relation, confidence, tlp, source, created_at
), tied AS (
    SELECT * FROM untidy
    UNION ALL
    SELECT l.threat_id, l.ioc_id, l.relation, l.confidence, l.tlp, l.source, l.created_at FROM threat_iocs l
    WHERE (l.threat_id, l.ioc_id, l.relation) IN (SELECT threat_id, ioc_id, relation FROM untidy)
)
INSERT INTO threat_iocs (threat_id, ioc_id, relation, confidence, tlp, source, created_at)
SELECT threat_id, ioc_id, relation, max(confidence),
       -- the strictest of the group: 0014's order (tlp_stricter takes two)
       (ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'])[
           max(array_position(ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'], tlp))],
       (array_agg(source ORDER BY created_at, source) FILTER (WHERE source IS NOT NULL))[1],
       min(created_at)
FROM tied GROUP BY threat_id, ioc_id, relation
ON CONFLICT (threat_id, ioc_id, relation) DO UPDATE SET
    confidence = GREATEST(threat_iocs.confidence, EXCLUDED.confidence),
    tlp = tlp_stricter(threat_iocs.tlp, EXCLUDED.tlp),
    source = COALESCE(EXCLUDED.source, threat_iocs.source),
    created_at = LEAST(threat_iocs.created_at, EXCLUDED.created_at);

WITH untidy AS (
    DELETE FROM threat_relations WHERE right(type, 1) = '-'
    RETURNING source_id, target_id, rtrim(type, '-') AS type, confidence, tlp, source, created_at
), tied AS (
    SELECT * FROM untidy
    UNION ALL
    SELECT r.source_id, r.target_id, r.type, r.confidence, r.tlp, r.source, r.created_at FROM threat_relations r
    WHERE (r.source_id, r.target_id, r.type) IN (SELECT source_id, target_id, type FROM untidy)
)
INSERT INTO threat_relations (source_id, target_id, type, confidence, tlp, source, created_at)
SELECT source_id, target_id, type, max(confidence),
       (ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'])[
           max(array_position(ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'], tlp))],
       (array_agg(source ORDER BY created_at, source) FILTER (WHERE source IS NOT NULL))[1],
       min(created_at)
FROM tied GROUP BY source_id, target_id, type
ON CONFLICT (source_id, target_id, type) DO UPDATE SET
    confidence = GREATEST(threat_relations.confidence, EXCLUDED.confidence),
    tlp = tlp_stricter(threat_relations.tlp, EXCLUDED.tlp),
    source = COALESCE(EXCLUDED.source, threat_relations.source),
    created_at = LEAST(threat_relations.created_at, EXCLUDED.created_at);
