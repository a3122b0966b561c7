"""Link and relation verbs stored with separators at their end (`uses-`) are rewritten as check_relation_verb reads
them today (`uses`), merged into the tidy verb where the pair holds it too (sql/0016_relation_verb_edges.sql).

Before check_relation_verb dropped separators at either end, `uses_` and `uses-` were stored as the verb `uses-`: a
second verb beside `uses` for the same pair, shown apart, counted against the pair's 8, and left by an unlink of
`uses`."""

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy
from helpers import copy_migrations

from threatflow.adapters.postgres import create_engine
from threatflow.db.migrate import DEFAULT_SQL_DIR, migrate
from threatflow.platform.config import Settings
from threatflow.threats.model import check_relation_verb

pytestmark = pytest.mark.integration
VERB_EDGES_VERSION = 16


def _day(day):
    return datetime(2026, 1, day, tzinfo=UTC)


def test_verbs_stored_with_a_trailing_separator_are_rewritten_and_merged_into_the_tidy_verb(fresh_database, tmp_path):
    """A database at the version before the migration holds what the earlier check_relation_verb stored: `uses-` and
    `uses--` beside `uses` for one pair (with their own confidence, TLP, source and age), verbs held only untidy
    (`attributed-to-`, and `drops-` with `drops--`, which would collide once both are rewritten), `x--y` (an inner
    run of hyphens, which check_relation_verb keeps). After it each pair holds one row per verb as read today: the
    higher confidence, the stricter TLP, the earlier created_at and the earliest source named."""
    copy_migrations(tmp_path, range(VERB_EDGES_VERSION))
    engine = create_engine(Settings.from_env({"DATABASE_URL": fresh_database}))
    try:
        migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)
        with engine.begin() as conn:

            def run(sql, **params):
                return conn.execute(sqlalchemy.text(sql), params).all()

            ioc = {
                tlp: run(
                    "INSERT INTO iocs (type, value, tlp, first_seen, last_seen, last_seen_day)"
                    " VALUES ('domain', :v, :t, now(), now(), current_date) RETURNING id",
                    v=f"{uuid.uuid4().hex}.com",
                    t=tlp,
                )[0][0]
                for tlp in ("green", "amber")
            }
            threat = {
                name: run("INSERT INTO threats (kind, name, tlp) VALUES ('malware', :n, :t) RETURNING id", n=f"M-{name}", t=tlp)[0][0]
                for name, tlp in (("green", "green"), ("green2", "green"), ("red", "red"))
            }
            green, green2, red = threat["green"], threat["green2"], threat["red"]
            links = [
                (green, ioc["green"], "uses", 40, "green", "api", _day(3)),
                (green, ioc["green"], "uses-", 70, "amber", "stix", _day(2)),
                (green, ioc["green"], "uses--", 10, "red", None, _day(1)),
                (green, ioc["green"], "indicates", 50, "green", "api", _day(5)),
                (green, ioc["amber"], "attributed-to-", 55, "amber", "misp", _day(4)),
                (green, ioc["amber"], "x--y", 20, "amber", None, _day(4)),
                (green, ioc["amber"], "drops-", 30, "amber", "a", _day(6)),
                (green, ioc["amber"], "drops--", 60, "amber", "b", _day(7)),
                (red, ioc["green"], "uses", 90, "red", "api", _day(1)),
                (red, ioc["green"], "uses-", 20, "red", "stix", _day(2)),
            ]
            for t, i, verb, confidence, tlp, source, created in links:
                run(
                    "INSERT INTO threat_iocs (threat_id, ioc_id, relation, confidence, tlp, source, created_at)"
                    " VALUES (:t, :i, :v, :c, :l, :s, :at) RETURNING 1",
                    t=t,
                    i=i,
                    v=verb,
                    c=confidence,
                    l=tlp,
                    s=source,
                    at=created,
                )
            relations = [
                (green, green2, "uses", 30, "green", None, _day(2)),
                (green, green2, "uses-", 80, "amber", "stix", _day(1)),
                (green2, green, "variant-of-", 45, "green", "api", _day(3)),
                (green, red, "uses", 90, "red", "api", _day(4)),
            ]
            for s, t, verb, confidence, tlp, source, created in relations:
                run(
                    "INSERT INTO threat_relations (source_id, target_id, type, confidence, tlp, source, created_at)"
                    " VALUES (:s, :t, :v, :c, :l, :src, :at) RETURNING 1",
                    s=s,
                    t=t,
                    v=verb,
                    c=confidence,
                    l=tlp,
                    src=source,
                    at=created,
                )
        copy_migrations(tmp_path, range(VERB_EDGES_VERSION, 10_000))
        report = migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)

        def stored():
            with engine.connect() as conn:
                return (
                    sorted(
                        tuple(r)
                        for r in conn.execute(
                            sqlalchemy.text("SELECT threat_id, ioc_id, relation, confidence, tlp, source, created_at FROM threat_iocs")
                        )
                    ),
                    sorted(
                        tuple(r)
                        for r in conn.execute(
                            sqlalchemy.text("SELECT source_id, target_id, type, confidence, tlp, source, created_at FROM threat_relations")
                        )
                    ),
                )

        after = stored()
        assert after[0] == sorted(
            [
                (green, ioc["green"], "uses", 70, "red", "stix", _day(1)),
                (green, ioc["green"], "indicates", 50, "green", "api", _day(5)),
                (green, ioc["amber"], "attributed-to", 55, "amber", "misp", _day(4)),
                (green, ioc["amber"], "x--y", 20, "amber", None, _day(4)),
                (green, ioc["amber"], "drops", 60, "amber", "a", _day(6)),
                (red, ioc["green"], "uses", 90, "red", "api", _day(1)),
            ]
        )
        assert after[1] == sorted(
            [
                (green, green2, "uses", 80, "amber", "stix", _day(1)),
                (green2, green, "variant-of", 45, "green", "api", _day(3)),
                (green, red, "uses", 90, "red", "api", _day(4)),
            ]
        )
        # What is stored is what check_relation_verb gives for it, and for each verb it was stored from.
        assert all(check_relation_verb(row[2]) == row[2] for table in after for row in table)
        assert {check_relation_verb(row[2]) for row in links} == {row[2] for row in after[0]}
        assert VERB_EDGES_VERSION in report.applied

        # Run again (a hand re-run, or a row written meanwhile by code from before the fix): nothing changes.
        with engine.begin() as conn:
            conn.connection.driver_connection.cursor().execute((DEFAULT_SQL_DIR / "0016_relation_verb_edges.sql").read_text())
        assert stored() == after
    finally:
        engine.dispose()
