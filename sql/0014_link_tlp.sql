-- A TLP of their own for threat <-> IoC links, IoC <-> IoC relations and threat <-> threat relations. A tie showed
-- to whoever read both its ends, so one learnt from TLP:RED material between two amber objects was either refused
-- (STIX imports) or shown to amber readers once an end was lowered from red. Now a tie keeps the marking of what it
-- was learnt from, never below the stricter of its ends when it is written, and a read hides a tie above the
-- reader's clearance as it hides an end. Existing ties take the stricter of their two ends' current TLPs (what they
-- were readable at until now). The text and CHECK are those of iocs.tlp and threats.tlp.

ALTER TABLE threat_iocs ADD COLUMN IF NOT EXISTS tlp text CHECK (tlp IN ('clear', 'green', 'amber', 'amber+strict', 'red'));
ALTER TABLE ioc_relations ADD COLUMN IF NOT EXISTS tlp text CHECK (tlp IN ('clear', 'green', 'amber', 'amber+strict', 'red'));
ALTER TABLE threat_relations ADD COLUMN IF NOT EXISTS tlp text CHECK (tlp IN ('clear', 'green', 'amber', 'amber+strict', 'red'));

-- The stricter of two TLPs (NULL when both are), for "the stricter of two ends" in SQL: one expression, inlined where
-- it is called (writers elsewhere use platform.vocabulary.Tlp.rank).
CREATE OR REPLACE FUNCTION tlp_stricter(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'])[
        GREATEST(array_position(ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'], a),
                 array_position(ARRAY['clear', 'green', 'amber', 'amber+strict', 'red'], b))]
$$;

UPDATE threat_iocs l SET tlp = tlp_stricter(t.tlp, i.tlp)
FROM threats t, iocs i WHERE t.id = l.threat_id AND i.id = l.ioc_id AND l.tlp IS NULL;
UPDATE ioc_relations r SET tlp = tlp_stricter(a.tlp, b.tlp)
FROM iocs a, iocs b WHERE a.id = r.source_id AND b.id = r.target_id AND r.tlp IS NULL;
UPDATE threat_relations r SET tlp = tlp_stricter(a.tlp, b.tlp)
FROM threats a, threats b WHERE a.id = r.source_id AND b.id = r.target_id AND r.tlp IS NULL;

-- A tie written without a TLP takes the stricter of its ends' TLPs as they are then. The product's writers
-- (threatflow.intel.repository, threatflow.threats.repository) always give one, floored at the ends in the statement
-- itself (a join: a row trigger doing the lookup doubled the time of 10,000 links, ~1 s to ~2 s); this trigger fills in
-- a row written without one (a hand-written INSERT, a test's). Lowering an end later leaves its ties as they were.
CREATE OR REPLACE FUNCTION tie_tlp_floor() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ends text;
BEGIN
    IF TG_TABLE_NAME = 'threat_iocs' THEN
        SELECT tlp_stricter(t.tlp, i.tlp) INTO ends FROM threats t, iocs i WHERE t.id = NEW.threat_id AND i.id = NEW.ioc_id;
    ELSIF TG_TABLE_NAME = 'ioc_relations' THEN
        SELECT tlp_stricter(a.tlp, b.tlp) INTO ends FROM iocs a, iocs b WHERE a.id = NEW.source_id AND b.id = NEW.target_id;
    ELSE
        SELECT tlp_stricter(a.tlp, b.tlp) INTO ends FROM threats a, threats b WHERE a.id = NEW.source_id AND b.id = NEW.target_id;
    END IF;
    NEW.tlp := COALESCE(ends, 'red');  -- no end: the foreign key refuses the row anyway
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS threat_iocs_tlp_floor_trg ON threat_iocs;
CREATE TRIGGER threat_iocs_tlp_floor_trg BEFORE INSERT ON threat_iocs
    FOR EACH ROW WHEN (NEW.tlp IS NULL) EXECUTE FUNCTION tie_tlp_floor();
DROP TRIGGER IF EXISTS ioc_relations_tlp_floor_trg ON ioc_relations;
CREATE TRIGGER ioc_relations_tlp_floor_trg BEFORE INSERT ON ioc_relations
    FOR EACH ROW WHEN (NEW.tlp IS NULL) EXECUTE FUNCTION tie_tlp_floor();
DROP TRIGGER IF EXISTS threat_relations_tlp_floor_trg ON threat_relations;
CREATE TRIGGER threat_relations_tlp_floor_trg BEFORE INSERT ON threat_relations
    FOR EACH ROW WHEN (NEW.tlp IS NULL) EXECUTE FUNCTION tie_tlp_floor();

ALTER TABLE threat_iocs ALTER COLUMN tlp SET NOT NULL;
ALTER TABLE ioc_relations ALTER COLUMN tlp SET NOT NULL;
ALTER TABLE threat_relations ALTER COLUMN tlp SET NOT NULL;
