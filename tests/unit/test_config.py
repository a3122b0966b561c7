import pytest

from threatflow.platform.config import RateLimit, Settings
from threatflow.platform.errors import ConfigError

SECRET = "x" * 40


def test_required_variable_missing_names_it():
    with pytest.raises(ConfigError, match="JWT_SECRET is not set"):
        Settings.from_env({}, require=("JWT_SECRET",))


def test_short_jwt_secret_is_refused():
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        Settings.from_env({"JWT_SECRET": "short"})


@pytest.mark.parametrize("text", ["10", "a/b", "0/60", "10/0"])
def test_bad_rate_limit_names_variable(text):
    with pytest.raises(ConfigError, match="RATE_LIMIT_PER_IP"):
        Settings.from_env({"RATE_LIMIT_PER_IP": text})


def test_rate_limit_parses():
    assert RateLimit.parse("X", "5/10") == RateLimit(5, 10)


def test_unknown_service_in_uses():
    with pytest.raises(ConfigError, match="THREATFLOW_USES names unknown services: mongo"):
        Settings.from_env({"THREATFLOW_USES": "postgres,mongo"})


def test_bad_integer_names_variable():
    with pytest.raises(ConfigError, match="JWT_TTL_SECONDS='soon'"):
        Settings.from_env({"JWT_TTL_SECONDS": "soon"})


def test_defaults_and_cors_list():
    s = Settings.from_env({"JWT_SECRET": SECRET, "CORS_ALLOWED_ORIGINS": "https://a.example/, https://b.example"})
    assert s.cors_allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert s.jwt_audience == "threatflow-api"
    assert s.uses == ("postgres", "redis", "pubsub", "firestore", "storage")


def test_public_masks_secrets():
    s = Settings.from_env({"JWT_SECRET": SECRET, "DATABASE_URL": "postgresql+pg8000://u:pw@db:5432/x", "DB_PASSWORD": "pw"})
    shown = s.public()
    assert shown["jwt_secret"] == "***"
    assert shown["db_password"] == "***"
    assert "pw" not in shown["database_url"]
    assert shown["database_url"].endswith("@db:5432/x")


def test_database_required_message():
    with pytest.raises(ConfigError, match="neither DATABASE_URL nor CLOUD_SQL_INSTANCE"):
        Settings.from_env({}).require_database()


@pytest.mark.parametrize("text", ["soon", "0", "99", "60001", "-5000"])
def test_a_hunting_budget_out_of_bounds_is_refused_naming_the_variable(text):
    with pytest.raises(ConfigError, match="FLOWS_HUNT_TIMEOUT_MS"):
        Settings.from_env({"FLOWS_HUNT_TIMEOUT_MS": text})


def test_the_hunting_budget_defaults_to_the_repository_default():
    from threatflow.flows import repository

    assert Settings.from_env({}).flows_hunt_timeout_ms == repository.HUNT_TIMEOUT_MS == 5000
    assert Settings.from_env({"FLOWS_HUNT_TIMEOUT_MS": "60000"}).flows_hunt_timeout_ms == 60000


@pytest.mark.parametrize("text", ["0", "101", "150"])
def test_a_hash_share_outside_1_to_100_percent_is_refused_naming_the_variable(text):
    """A share over 100 % was accepted and silently taken as 100 by the login guard."""
    with pytest.raises(ConfigError, match="LOGIN_HASH_SHARE_PERCENT"):
        Settings.from_env({"LOGIN_HASH_SHARE_PERCENT": text})


def test_a_hash_share_of_100_percent_is_accepted():
    assert Settings.from_env({"LOGIN_HASH_SHARE_PERCENT": "100"}).login_hash_share_percent == 100


def _readme_configuration_rows():
    """{variable: the README's default cell for it} from the table under "## Configuration"."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        defaults = cells[1].split(" / ")
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def test_the_readme_configuration_table_lists_every_variable_with_its_default():
    """The table is written by hand from VARIABLES: every variable is a row, and a default the README gives as a
    literal (`600/60`) or as none (—) is the one the code uses; prose defaults ("all five", "Google's") are not compared."""
    from threatflow.devstack import stack
    from threatflow.platform.config import VARIABLES

    rows = _readme_configuration_rows()
    declared = {v.name: v.default for v in VARIABLES}
    # Read by the CLI and the local stack, not by a function: documented in the same table.
    local = {"THREATFLOW_PORT": str(stack.DEFAULT_PORT), "THREATFLOW_STATE_DIR": stack.DEFAULT_STATE_DIR.name}
    assert sorted(set(declared) - set(rows)) == [], "variables missing from the README table"
    assert sorted(set(rows) - set(declared) - set(local)) == [], "README rows for variables the code does not declare"
    mismatched = []
    for name, default in {**declared, **local}.items():
        cell = rows[name]
        literal = cell.startswith("`") and cell.endswith("`") and cell.count("`") == 2 and "…" not in cell
        if (cell == "—" and default not in (None, "")) or (literal and cell.strip("`") != default):
            mismatched.append((name, cell, default))
    assert mismatched == []
