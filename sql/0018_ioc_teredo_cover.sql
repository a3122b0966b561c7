-- A cidr IoC of Teredo addresses (2001:0::/32, RFC 4380) covers the IPv4 clients its addresses carry, inverted in their
-- last 32 bits (intel.enrichment.host_tlps, as the ipv6 Teredo IoCs of sql/0017_ioc_address_cover.sql): from /96 on,
-- the range of clients its last 32 bits span; shorter (a server's clients, 2001::/32 itself), every client, as 2002::/16
-- covers every 6to4 router. NULL for a row of another type or a cidr outside Teredo's space. One GiST scan a client:
--   ioc_teredo_clients(type, value) @> client
CREATE OR REPLACE FUNCTION ioc_teredo_clients(ioc_type text, ioc_value text) RETURNS int8range
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ioc_type = 'cidr' AND family(ioc_inet(ioc_type, ioc_value)) = 6
                     AND ioc_inet(ioc_type, ioc_value) && CAST('2001::/32' AS inet)
                THEN CASE WHEN masklen(ioc_inet(ioc_type, ioc_value)) < 96 THEN int8range(0, 4294967295, '[]')
                          ELSE int8range(
                              4294967295 - ((broadcast(ioc_inet(ioc_type, ioc_value)) & CAST('::ffff:ffff' AS inet)) - CAST('::' AS inet)),
                              4294967295 - ((network(ioc_inet(ioc_type, ioc_value)) & CAST('::ffff:ffff' AS inet)) - CAST('::' AS inet)),
                              '[]') END END
$$;

CREATE INDEX IF NOT EXISTS iocs_teredo_clients_gist ON iocs USING gist (ioc_teredo_clients(type, value))
    WHERE type = 'cidr' AND ioc_teredo_clients(type, value) IS NOT NULL;
