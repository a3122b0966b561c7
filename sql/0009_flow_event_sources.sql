-- When each source's flows without a time of their own (no stime: the partitioned UNSW-NB15 layout)
-- were first observed. Their event time is this, so the same source sent again (a retried batch, a
-- file loaded again, another upload of one file) gets the same (event_time, event_key) and is
-- stored once: the event time is part of flow_events' key. flow-retention deletes the rows older
-- than the retention (their events are dropped), and a source met again after that starts anew.
CREATE TABLE IF NOT EXISTS flow_event_sources (
    source      text        PRIMARY KEY,
    observed_at timestamptz NOT NULL
);
