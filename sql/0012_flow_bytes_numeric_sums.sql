-- flow_bytes_by_proto_hourly cast each hour's byte sums to bigint. A flow may carry up to 2^62 bytes each way
-- (what flow_events keeps), so two such flows in one hour and protocol made every REFRESH fail with "bigint out of
-- range": the refresh-flow-views job failed at each run and the roll-ups stayed frozen until flow-retention dropped
-- that day. The sums are numeric now (exact, any size); the API reads them as integers.
DROP MATERIALIZED VIEW IF EXISTS flow_bytes_by_proto_hourly;
CREATE MATERIALIZED VIEW flow_bytes_by_proto_hourly AS
SELECT date_trunc('hour', event_time) AS hour,
       proto,
       count(*)::bigint AS events,
       COALESCE(sum(sbytes), 0) AS sbytes,
       COALESCE(sum(dbytes), 0) AS dbytes,
       count(*) FILTER (WHERE predicted_attack)::bigint AS attack_events
FROM flow_events
GROUP BY 1, 2;
CREATE UNIQUE INDEX IF NOT EXISTS flow_bytes_by_proto_hourly_key ON flow_bytes_by_proto_hourly (hour, proto);
