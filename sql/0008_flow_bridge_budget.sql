-- The flow bridge's enrichment budget (issue 9): IoCs it queued for enrichment per clock hour,
-- shared by every instance, so a flood of detected (or spoofed) sources cannot queue more
-- lookups than FLOWS_BRIDGE_ENRICH_PER_HOUR and starve the analysts' own enrichment.
CREATE TABLE IF NOT EXISTS flow_bridge_enrichment (
    window_start timestamptz PRIMARY KEY,
    queued       integer     NOT NULL CHECK (queued >= 0)
);
