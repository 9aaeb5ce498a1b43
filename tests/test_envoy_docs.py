"""The "Gateways → Envoy" snippets of clients/README.md, exactly as written: the admitd config
serves, the Envoy YAML agrees with it (filter, cluster, domain, credential, descriptor keys), and
the descriptors its actions build get the answers the section describes. No Envoy binary runs
here (none is packaged for these machines): the actions are evaluated as Envoy documents them."""

from __future__ import annotations

import re
from typing import Any

import yaml

from admitd._api.auth import hash_key
from admitd.v1 import admission_pb2 as pb
from support import ROOT
from support.envoy import OK, OVER_LIMIT, descriptor, headers, request, should
from support.harness import MakeHarness


def _snippets() -> tuple[Any, Any, Any]:
    """The admitd config, the Envoy bootstrap and the per-route reports of the section."""
    text = (ROOT / "clients" / "README.md").read_text()
    # Up to the next heading of the same level or above (the LiteLLM subsection follows).
    section = re.split(r"\n###? ", text.split("### Envoy", 1)[1], maxsplit=1)[0]
    admitd, envoy, per_route = (
        yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)
    )
    return admitd, envoy, per_route


def _descriptor(
    actions: list[Any], request_headers: dict[str, str]
) -> list[tuple[str, str]] | None:
    """The entries Envoy's actions build for a request (None: an action found nothing, so
    Envoy sends no descriptor)."""
    entries = []
    for action in actions:
        if "request_headers" in action:
            rule = action["request_headers"]
            if rule["header_name"] not in request_headers:
                return None
            entries.append((rule["descriptor_key"], request_headers[rule["header_name"]]))
        else:
            rule = action["generic_key"]
            entries.append((rule.get("descriptor_key", "generic_key"), rule["descriptor_value"]))
    return entries


def _hits(rate_limit: Any, metadata: dict[str, int]) -> int | None:
    addend = rate_limit.get("hits_addend")
    if addend is None:
        return None
    if "number" in addend:
        return int(addend["number"])
    found = re.fullmatch(r"%DYNAMIC_METADATA\(io\.envoy\.ai_gateway:(\w+)\)%", addend["format"])
    assert found is not None, addend
    return metadata[found.group(1)]


def test_the_readmes_envoy_snippets_agree_with_each_other() -> None:
    admitd, envoy, per_route = _snippets()
    domain = admitd["envoy"]["domains"][0]
    (listener,) = envoy["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    assert hcm["typed_config"]["@type"].endswith(
        ".http_connection_manager.v3.HttpConnectionManager"
    )
    limiter, router = hcm["typed_config"]["http_filters"]
    assert router["name"] == "envoy.filters.http.router"  # the router comes last
    assert limiter["name"] == "envoy.filters.http.ratelimit"
    config = limiter["typed_config"]
    assert (
        config["@type"]
        == "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
    )
    assert config["domain"] == domain["name"]
    service = config["rate_limit_service"]
    assert service["transport_api_version"] == "V3"
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    cluster = clusters[service["grpc_service"]["envoy_grpc"]["cluster_name"]]
    options = cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in options[next(iter(options))]["explicit_http_config"]
    port = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert port["address"]["socket_address"]["port_value"] == 50051
    (metadata,) = service["grpc_service"]["initial_metadata"]
    scheme, key = metadata["value"].split()
    assert (metadata["key"], scheme) == ("authorization", "Bearer")
    (client,) = admitd["auth"]["clients"]
    assert (client["api_key_sha256"], client["admin"]) == (hash_key(key), True)
    (route,) = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["cluster"] in clusters
    pools = [p["name"] for p in admitd["pools"]]
    entries = _descriptor(route["route"]["rate_limits"][0]["actions"], {"x-tenant": "search"})
    assert entries == [(domain["tenant_key"], "search"), (domain["pool_key"], pools[0])]
    reports = per_route["typed_per_filter_config"]["envoy.filters.http.ratelimit"]
    assert reports["@type"].endswith(".ratelimit.v3.RateLimitPerRoute")
    marks = [
        dict(_descriptor(r["actions"], {"x-tenant": "t"}) or ()).get(domain["report_key"])
        for r in reports["rate_limits"]
    ]
    assert marks == [None, "input", "output"]
    assert [bool(r.get("apply_on_stream_done")) for r in reports["rate_limits"]] == [
        False,
        True,
        True,
    ]


async def test_the_readmes_envoy_snippets_work_together(make_harness: MakeHarness) -> None:
    admitd, envoy, per_route = _snippets()
    h = await make_harness(admitd)
    listener = envoy["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    limiter = hcm["http_filters"][0]["typed_config"]
    (metadata,) = limiter["rate_limit_service"]["grpc_service"]["initial_metadata"]
    key = metadata["value"].removeprefix("Bearer ")
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]

    async def envoy_sends(rate_limits: list[Any], used: dict[str, int]) -> Any:
        built = [
            (_descriptor(r["actions"], {"x-tenant": "search"}), _hits(r, used)) for r in rate_limits
        ]
        sent = request(
            *(descriptor(e, hits) for e, hits in built if e is not None), domain=limiter["domain"]
        )
        return await should(h, sent, key=key)

    assert _descriptor(route["rate_limits"][0]["actions"], {}) is None  # no header: no limit
    assert (await envoy_sends(route["rate_limits"], {})).overall_code == OK
    reports = per_route["typed_per_filter_config"]["envoy.filters.http.ratelimit"]["rate_limits"]
    check, *after = reports
    assert (await envoy_sends([check], {})).overall_code == OK
    used = {"llm_input_token": 4_999_000, "llm_output_token": 2_000}  # past the daily 5M
    assert (await envoy_sends(after, used)).overall_code == OK
    rows = (
        await h.stub.GetUsage(
            pb.GetUsageRequest(), timeout=10, metadata=(("authorization", f"Bearer {key}"),)
        )
    ).rows
    assert [(r.tenant, r.pool, r.calls, r.input_tokens, r.output_tokens) for r in rows] == [
        ("search", "openai/gpt-4o", 2, 4_999_001, 2_000)
    ]
    refused = await envoy_sends([check], {})
    assert refused.overall_code == OVER_LIMIT
    assert headers(refused)["x-admitd-reason"] == "TENANT_QUOTA"
    assert int(headers(refused)["retry-after"]) <= 86_400
