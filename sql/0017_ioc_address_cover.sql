-- The records that cover a host without holding it (intel.enrichment.host_tlps): a CIDR IoC containing the address,
-- and a 6to4 or Teredo IPv6 IoC carrying an IPv4 address. GET /detect/intel/{ip} and every enrichment run read the
-- strictest TLP among them once per host, so each is one indexed lookup, never a scan of the CIDRs:
--   ioc_inet(type, value) >>= host         CIDR IoCs containing the host (GiST, inet_ops)
--   ioc_inet(type, value) && 2002:a.b.c.d::/48   6to4 IoCs carrying a.b.c.d, and IPv6 CIDRs overlapping its 6to4 /48
--   ioc_teredo_client(type, value) = a.b.c.d     Teredo IoCs whose client is a.b.c.d (btree; the client is stored
--                                          inverted in the last 32 bits, so no prefix of the address finds it)
-- The functions return NULL for a row of another type or a value not spelled as an address; every stored cidr and
-- ipv6 value is one, normalised by the iocs domain (IPv6 compressed lower case, host bits of a CIDR cleared), which
-- PostgreSQL's inet reads. Plain SQL, so the planner inlines them and may run them in parallel workers.

CREATE OR REPLACE FUNCTION ioc_inet(ioc_type text, ioc_value text) RETURNS inet
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ioc_type IN ('cidr', 'ipv6') AND ioc_value ~ '^[0-9a-f:.]{2,45}(/[0-9]{1,3})?$'
                THEN CAST(ioc_value AS inet) END
$$;

CREATE OR REPLACE FUNCTION ioc_teredo_client(ioc_type text, ioc_value text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Teredo (2001:0::/32, RFC 4380): the client's IPv4 address is the last 32 bits inverted, here as a number
    SELECT CASE WHEN ioc_type = 'ipv6' AND ioc_value ~ '^2001:(0:|:)[0-9a-f:.]{0,40}$'
                THEN 4294967295 - ((CAST(ioc_value AS inet) & CAST('::ffff:ffff' AS inet)) - CAST('::' AS inet)) END
$$;

CREATE INDEX IF NOT EXISTS iocs_address_cover_gist ON iocs USING gist (ioc_inet(type, value) inet_ops)
    WHERE type IN ('cidr', 'ipv6');
CREATE INDEX IF NOT EXISTS iocs_teredo_client_idx ON iocs (ioc_teredo_client(type, value))
    WHERE type = 'ipv6' AND ioc_teredo_client(type, value) IS NOT NULL;
