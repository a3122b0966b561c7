"""An IoC keeps at most MAX_EVIDENCE_PER_SOURCE (256) evidence rows per source (ioc_evidence: families, tags and
ATT&CK ids a source named, read by threat correlation). Each enrichment run's evidence is bounded (50 values a list),
but every run's was unioned into the stored rows without limit: an IoC re-enriched daily by a source whose tags
change (OTX pulses, Hybrid Analysis reports) collected new rows at every run. Like an IoC's tags: the rows it holds,
then the run's new ones in order while there is room; the rest is counted (put_evidence's answer, logged)."""

import pytest

pytestmark = pytest.mark.integration


def test_an_iocs_evidence_per_source_is_bounded_and_the_rest_counted(backend_env, db):
    from threatflow.adapters.postgres import create_engine
    from threatflow.enrichment import repository
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        with engine.begin() as conn:
            new = (
                "INSERT INTO iocs (type, value, first_seen, last_seen, last_seen_day)"
                " VALUES ('domain', 'evidence.bound-test.com', now(), now(), current_date) RETURNING id"
            )
            ioc = conn.exec_driver_sql(new).scalar_one()
            first = repository.put_evidence(conn, ioc, [("otx", "tag", f"a{i:03d}") for i in range(200)])
            second = repository.put_evidence(conn, ioc, [("otx", "tag", f"b{i:03d}") for i in range(100)] + [("otx", "tag", "a000")])
            other = repository.put_evidence(conn, ioc, [("urlhaus", "malware_family", "emotet")])
    finally:
        engine.dispose()
    assert (first, second, other) == (0, 44, 0)
    count = "SELECT count(*) FROM ioc_evidence WHERE ioc_id = %s AND source = %s"
    assert db.one(count, ioc, "otx")[0] == 256 and db.one(count, ioc, "urlhaus")[0] == 1
    kept = db.one("SELECT array_agg(value ORDER BY value) FROM ioc_evidence WHERE ioc_id = %s AND value LIKE 'b%%'", ioc)[0]
    assert kept == [f"b{i:03d}" for i in range(56)]
