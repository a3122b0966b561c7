-- A cidr IoC of Teredo addresses (2001:0::/32, RFC 4380) covers the IPv4 clients its addresses carry, inverted in their
-- last 32 bits (intel.enrichment.host_tlps, as the ipv6 Teredo IoCs of sql/0017_ioc_address_cover.sql): from /96 on,
-- the range of clients its last 32 bits span; shorter (a server's clients, 2001::/32 itself), every client, as 2002::/16
-- covers every 6to4 router. NULL for a row of another type or a cidr outside Teredo's space. One GiST scan a client:
--   ioc_teredo_clients(type, value) @> client
-- PL/pgSQL, so never inlined: inlined, its expression (ioc_inet five times) doubled the covering statement's planning.
CREATE OR REPLACE FUNCTION ioc_teredo_clients(ioc_type text, ioc_value text) RETURNS int8range
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    net inet;
BEGIN
    -- ioc_inet's rule, written out: a function naming another unqualified fails where search_path is empty (a restore)
    IF ioc_type IS DISTINCT FROM 'cidr' OR ioc_value IS NULL OR ioc_value !~ '^[0-9a-f:.]{2,45}(/[0-9]{1,3})?$' THEN
        RETURN NULL;
    END IF;
    net := CAST(ioc_value AS inet);
    IF family(net) <> 6 OR NOT net && CAST('2001::/32' AS inet) THEN
        RETURN NULL;
    END IF;
    IF masklen(net) < 96 THEN
        RETURN int8range(0, 4294967295, '[]');
    END IF;
    RETURN int8range(4294967295 - ((broadcast(net) & CAST('::ffff:ffff' AS inet)) - CAST('::' AS inet)),
                     4294967295 - ((network(net) & CAST('::ffff:ffff' AS inet)) - CAST('::' AS inet)), '[]');
END
$$;

CREATE INDEX IF NOT EXISTS iocs_teredo_clients_gist ON iocs USING gist (ioc_teredo_clients(type, value))
    WHERE type = 'cidr' AND ioc_teredo_clients(type, value) IS NOT NULL;
