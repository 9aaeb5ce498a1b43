"""Configuration: every bad file in tests/configs/bad produces exactly the problems in its
sibling ``.expected`` file (one line per problem); good files and the shipped example load."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from admitd import EMBEDDED_DEFAULT, ConfigError, Settings, load_config, parse_config
from admitd._config import PoolConfig, TenantConfig, validate_listen

TESTS = Path(__file__).resolve().parent
EXAMPLE = TESTS.parent / "examples" / "admitd.yaml"
BAD = sorted((TESTS / "configs" / "bad").glob("*.yaml"))
GOOD = sorted((TESTS / "configs" / "good").glob("*.yaml"))


def test_the_config_folders_are_populated() -> None:
    assert len(BAD) >= 12
    assert {p.name for p in GOOD} >= {"empty.yaml", "design.yaml"}
    expected = sorted((TESTS / "configs" / "bad").glob("*.expected"))
    assert [p.stem for p in expected] == [p.stem for p in BAD], "one .expected per bad file"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config_reports_exactly_its_problems(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().splitlines()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == expected
    assert caught.value.source == str(path)
    assert str(caught.value).splitlines() == [
        f"{path}: invalid configuration:",
        *(f"  {problem}" for problem in expected),
    ]


@pytest.mark.parametrize("path", [*GOOD, EXAMPLE], ids=lambda p: p.stem)
def test_good_config_loads(path: Path) -> None:
    settings = load_config(path)
    assert settings.pools
    assert settings.listen == "0.0.0.0:50051"


def test_an_empty_file_is_the_all_defaults_config() -> None:
    settings = load_config(TESTS / "configs" / "good" / "empty.yaml")
    assert settings == Settings() == parse_config(None) == parse_config({})
    assert [p.name for p in settings.pools] == ["default"]
    assert [t.name for t in settings.tenants] == ["default"]
    assert settings.default_tenant is None
    assert settings.backend.kind == "memory"
    assert settings.lease.ttl == 120.0


def test_design_config_values() -> None:
    settings = load_config(TESTS / "configs" / "good" / "design.yaml")
    pool = settings.pool("openai/gpt-4o")
    assert pool is not None
    assert (pool.max_concurrency, pool.tokens_per_minute, pool.requests_per_minute) == (
        64,
        800_000,
        5000,
    )
    assert (pool.price.input_per_million, pool.price.output_per_million) == (2.5, 10.0)
    search = settings.tenant("search")
    assert search is not None
    assert (search.weight, search.max_concurrency, search.tokens_per_day) == (4.0, 20, 5_000_000)
    assert settings.queue.max_wait == 60.0
    assert (settings.budget.tokens_per_day, settings.budget.usd_per_day) == (50_000_000, 500.0)


def test_merge_keys_share_limits_without_counting_as_duplicate_keys() -> None:
    settings = load_config(TESTS / "configs" / "good" / "anchors.yaml")
    mini = settings.pool("openai/gpt-4o-mini")
    assert mini is not None
    assert (mini.tokens_per_minute, mini.max_concurrency) == (800_000, 128)
    assert settings.default_tenant == "search"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("120s", 120.0),
        ("1.5m", 90.0),
        ("250ms", 0.25),
        ("2h", 7200.0),
        (" 3 s ", 3.0),
        ("45", 45.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_durations_parse_to_seconds(written: Any, seconds: float) -> None:
    assert parse_config({"lease": {"ttl": written}}).lease.ttl == seconds


def test_durations_file() -> None:
    settings = load_config(TESTS / "configs" / "good" / "durations.yaml")
    assert (settings.drain_delay, settings.shutdown_grace) == (0.0, 1.5)
    assert (settings.lease.ttl, settings.lease.max_extend, settings.lease.reap_interval) == (
        7200.0,
        90.0,
        0.25,
    )
    assert (settings.queue.max_wait, settings.queue.aging) == (0.0, 30.0)


@pytest.mark.parametrize("written", ["2d", "1m30s", "-1s", "", "s", [1], {"s": 1}])
def test_durations_reject_what_they_cannot_read(written: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"lease": {"ttl": written}})
    [problem] = caught.value.problems
    assert problem.startswith("lease.ttl: expected a duration like 120s, 1.5m, 250ms or 2h, got ")


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every model nested in its fields (through lists and optionals)."""
    found = [model]
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in found:
                found += [m for m in _models(arg) if m not in found]
    return found


def test_every_field_has_a_default_and_a_description() -> None:
    models = _models(Settings)
    assert {m.__name__ for m in models} >= {"PoolConfig", "TenantConfig", "Price", "LeaseConfig"}
    for model in models:
        for name, field in model.model_fields.items():
            where = f"{model.__name__}.{name}"
            assert field.description, f"{where} has no docstring"
            # An entry (pool, tenant, client) must be named and a tls section must name its
            # two files; everything else can be left out.
            required_ok = name == "name" or where in {"TLSConfig.cert_file", "TLSConfig.key_file"}
            assert not field.is_required() or required_ok, f"{where} has no default"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _unset_fields(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    entries = data if isinstance(data, list) else [data]
    missing = []
    for name, field in model.model_fields.items():
        values = [e[name] for e in entries if isinstance(e, dict) and name in e]
        if not values:
            missing.append(f"{path}{name}")
        for nested in _models(model)[1:]:
            flat = [v for value in values for v in _as_list(value) if v is not None]
            if nested in {field.annotation, *typing.get_args(field.annotation)} and flat:
                missing += _unset_fields(nested, flat, f"{path}{name}.")
    return missing


# Fields the example shows only in comments: they need certificate files to be valid.
EXAMPLE_COMMENTED = ["tls.cert_file", "tls.key_file", "tls.client_ca_file", "cert_common_name"]


def test_the_example_sets_every_field() -> None:
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    assert _unset_fields(Settings, data) == ["auth.clients.cert_common_name"]
    assert data["tls"] is None
    comments = [line.lstrip("# ") for line in text.splitlines() if line.lstrip().startswith("#")]
    for name in EXAMPLE_COMMENTED:
        field = name.rpartition(".")[2]
        assert any(line.startswith(f"{field}: ") for line in comments), name
    assert load_config(EXAMPLE).pool("openai/gpt-4o") is not None


def test_the_embedded_default_has_pool_default_and_tenant_default() -> None:
    assert [p.name for p in EMBEDDED_DEFAULT.pools] == ["default"]
    assert [t.name for t in EMBEDDED_DEFAULT.tenants] == ["default"]
    assert EMBEDDED_DEFAULT.default_tenant == "default"
    assert EMBEDDED_DEFAULT.backend.kind == "memory"
    # It is a Settings like any other: it passes the same validation.
    assert parse_config(EMBEDDED_DEFAULT.model_dump()) == EMBEDDED_DEFAULT


def test_a_missing_file_is_a_config_error() -> None:
    path = TESTS / "configs" / "no-such-file.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["(file): No such file or directory"]


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"pools:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["line 2: not UTF-8 text"]


def test_cross_checks_also_guard_settings_built_in_code() -> None:
    duplicate = r"pools\[1\]\.name: duplicate 'a' \(also pools\[0\]\)"
    with pytest.raises(ValidationError, match=duplicate):
        Settings(pools=[PoolConfig(name="a"), PoolConfig(name="a")])


def test_parse_config_reports_problems_of_dict_configs() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"pools": [{"name": "p", "max_concurrency": 0}], "default_tenant": "x"}, "<t>")
    assert caught.value.problems == [
        "pools[0].max_concurrency: Input should be greater than 0",
        "default_tenant: 'x' is not a tenant (tenants: 'default')",
    ]
    assert str(caught.value).startswith("<t>: invalid configuration:\n")


def test_settings_are_immutable() -> None:
    settings = parse_config({})
    with pytest.raises(ValidationError, match="frozen"):
        settings.listen = "127.0.0.1:1"  # type: ignore[misc]


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "localhost:0", "[::]:50051", "admitd:65535"])
def test_listen_accepts_host_and_port(listen: str) -> None:
    assert validate_listen(listen) == listen


@pytest.mark.parametrize("listen", ["50051", ":50051", "localhost:", "localhost:http", "h:65536"])
def test_listen_rejects_anything_else(listen: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        validate_listen(listen)


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "admitd.yaml"
    path.write_text("backend: {kind: redis, url: redis://config:6379/0}\n")
    environ = {"ADMITD_REDIS_URL": "redis://secret:6379/1", "ADMITD_REDIS_PASSWORD": "hunter2"}
    settings = load_config(path, environ)
    assert settings.backend.url == "redis://secret:6379/1"
    assert settings.backend.password == "hunter2"
    assert "hunter2" not in repr(settings.backend)  # never in logs or reprs
    assert load_config(path, {}).backend.url == "redis://config:6379/0"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, {"ADMITD_REDIS_PASSWORD": "x"}).backend.password == "x"


TIERED: dict[str, Any] = {
    "tiers": [
        {"name": "free", "weight": 1, "max_concurrency": 2, "tokens_per_day": 1000},
        {"name": "pro", "weight": 4, "tokens_per_minute": 90000},
    ],
    "tenants": [
        {"name": "trial", "tier": "free"},
        {"name": "acme", "tier": "free", "max_concurrency": 8, "weight": 2},
        {"name": "big", "tier": "pro"},
        {"name": "plain"},
    ],
}


def test_a_tenant_takes_what_it_does_not_set_from_its_tier() -> None:
    settings = parse_config(TIERED)
    found = {t.name: t for t in settings.effective_tenants()}
    trial, acme, big, plain = (found[n] for n in ("trial", "acme", "big", "plain"))
    assert settings.tenant("acme") == acme
    assert (trial.weight, trial.max_concurrency, trial.tokens_per_day) == (1, 2, 1000)
    assert (acme.weight, acme.max_concurrency, acme.tokens_per_day) == (2, 8, 1000)
    assert (big.weight, big.tokens_per_minute, big.max_concurrency) == (4, 90000, None)
    assert (plain.weight, plain.max_concurrency) == (1, None)
    assert [t.name for t in settings.effective_tenants()] == ["trial", "acme", "big", "plain"]


def test_a_tier_field_set_to_its_default_still_counts_as_set() -> None:
    """A tier saying weight: 1 overrides nothing by accident, but it is still the tier's."""
    settings = parse_config(
        {"tiers": [{"name": "t", "weight": 1.0}], "tenants": [{"name": "x", "tier": "t"}]}
    )
    assert settings.tenant("x") == TenantConfig(name="x", tier="t", weight=1.0)
