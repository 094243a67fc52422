"""The production shape (docker-compose.yml, Dockerfile, Prometheus, Grafana) checked without Docker.

Compose validation, strongest first:

1. the Compose CLI, `docker compose config -q` or `docker-compose config -q`, when one is
   installed (skipped otherwise; Debian's `docker-compose` package works without a daemon);
2. always: JSON-schema validation against the Compose Specification schema vendored next to
   this file (`compose_spec.json`, taken byte for byte from Debian bookworm's `docker-compose`
   1.29.2-3 package, `compose/config/compose_spec.json`, Apache-2.0), which refuses unknown
   keys and wrong types;
3. always: what a schema cannot see: `depends_on` names, healthchecks behind `service_healthy`,
   files and directories the services mount or build from, the workers' settings (loaded
   through the real `Settings`), Prometheus targets and Grafana provisioning paths.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from config.settings import Settings
from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose_spec.json")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "loyalty.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

#: What every worker must be told explicitly (README, settings table).
WORKER_ENV = {
    "KAFKA_BOOTSTRAP",
    "REDIS_URL",
    "DATABASE_URL",
    "WEB_PORT",
    "API_TOKEN",
    "LOYALTY_APP_ID",
    "LOYALTY_PARTITIONS",
    "KAFKA_FETCH_MAX_WAIT_MS",
    "KAFKA_SESSION_TIMEOUT",
    "LOG_LEVEL",
}
#: Apache Kafka's default `group.min.session.timeout.ms`: shorter session timeouts are refused.
KAFKA_MIN_SESSION_TIMEOUT_MS = 6000


# ---------------------------------------------------------------------------- helpers

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\})")


def interpolate(value: Any) -> Any:
    """Compose variable interpolation with nothing set: `${X:-default}` -> default, `$$` -> `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") != "-":
            raise AssertionError(f"{match.group(0)!r} has no default: the stack must run without a .env")
        return match.group("arg")

    return _VAR.sub(one, value)


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(load_compose())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services(compose).items() if name.startswith("worker-")}


def sinks_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services(compose).items() if svc.get("command", [])[:2] == ["loyalty", "sinks"]}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        out.append((source, target))
    return out


def container_path_of(service: dict[str, Any], host: Path) -> str:
    """Where the bind-mounted `host` path appears inside `service`'s container."""
    for source, target in mounts(service):
        if source.startswith((".", "/")) and (ROOT / source).resolve() == host.resolve():
            return target
    raise AssertionError(f"{host.relative_to(ROOT)} is not mounted")


def schema_errors(data: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    # The file says draft 2019-09 under its old `http://...#` URI, which jsonschema does not map.
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(data)]


# ---------------------------------------------------------------------------- (a) compose


def test_compose_matches_the_compose_spec_schema() -> None:
    assert schema_errors(load_compose()) == []


def test_the_schema_check_refuses_a_misspelt_key_and_a_wrong_type() -> None:
    bad = load_compose()
    bad["services"]["worker-1"]["restartt"] = "always"
    bad["services"]["redis"]["healthcheck"]["retries"] = ["ten"]
    errors = schema_errors(bad)
    assert any("restartt" in e for e in errors), errors
    assert any(e.startswith("services.redis.healthcheck.retries") for e in errors), errors


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin nor `docker-compose` here (apt-get install docker-compose)")
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_production_services_are_all_there(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    wanted = {"kafka", "redis", "postgres", "prometheus", "grafana", "worker-1", "worker-2", "sinks", "generator"}
    assert wanted <= names


def test_depends_on_names_exist_and_healthy_conditions_have_healthchecks(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    for name, svc in svcs.items():
        for dep, condition in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} to be healthy; {dep} has no healthcheck"


def test_workers_wait_for_healthy_infrastructure(compose: dict[str, Any]) -> None:
    for name, svc in workers(compose).items():
        deps = depends_on(svc)
        for infra in ("kafka", "redis", "postgres"):
            assert deps.get(infra) == "service_healthy", f"{name} must wait for {infra} to be healthy"


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services(compose).items():
        build = svc.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile} missing"
        for source, _ in mounts(svc):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} uses volume {source}, not declared at top level"
    assert (PROVISIONING / "datasources").is_dir()
    assert (PROVISIONING / "dashboards").is_dir()
    assert DASHBOARD.is_file()
    assert PROMETHEUS.is_file()


def test_postgres_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    targets = {target for source, target in mounts(services(compose)["postgres"]) if source in compose["volumes"]}
    assert "/var/lib/postgresql/data" in targets


def test_kafka_is_a_single_kraft_node_with_a_healthcheck(compose: dict[str, Any]) -> None:
    kafka = services(compose)["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "healthcheck" in kafka
    # A KRaft cluster id is a base64url-encoded 16-byte UUID: 22 characters.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), env["CLUSTER_ID"]


def test_workers_have_every_setting_and_they_load(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    ws = workers(compose)
    assert set(ws) >= {"worker-1", "worker-2"}
    fields = {name.upper() for name in Settings.model_fields}
    kafka_env = environment(svcs["kafka"])
    advertised = {urlsplit(url).netloc for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    min_session_ms = int(kafka_env.get("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", KAFKA_MIN_SESSION_TIMEOUT_MS))
    loaded = {}
    for name, svc in ws.items():
        assert svc["command"] == ["loyalty", "worker"], name
        assert "build" in svc, f"{name} must be built from the repo's Dockerfile"
        env = environment(svc)
        assert set(env) >= WORKER_ENV, f"{name} lacks {sorted(WORKER_ENV - set(env))}"
        assert set(env) <= fields, f"{name} sets variables Settings does not read: {sorted(set(env) - fields)}"
        settings = Settings.model_validate({k.lower(): v for k, v in env.items()})  # no env, no .env
        loaded[name] = settings
        for bootstrap in settings.kafka_bootstrap.split(","):
            assert bootstrap in advertised, f"{name}: {bootstrap} is not a listener Kafka advertises"
        for url in (settings.redis_url, settings.database_url):
            assert urlsplit(url).hostname in svcs, f"{name}: {url} names no service"
        assert settings.api_token, f"{name}: API_TOKEN needs a default for local use"
        assert settings.kafka_fetch_max_wait_ms == 500
        assert settings.kafka_session_timeout * 1000 >= min_session_ms, (
            f"{name}: Apache Kafka refuses a session timeout below {min_session_ms} ms"
        )
    # One consumer group, one partitioning: the workers must agree.
    assert len({(s.loyalty_app_id, s.loyalty_partitions) for s in loaded.values()}) == 1


def test_api_token_comes_from_the_environment() -> None:
    raw = load_compose()
    for name, svc in workers(raw).items():
        assert re.fullmatch(r"\$\{API_TOKEN:-.+\}", str(environment(svc)["API_TOKEN"])), name


def test_generator_sends_the_production_traffic(compose: dict[str, Any]) -> None:
    gen = services(compose)["generator"]
    command = gen["command"] if isinstance(gen["command"], list) else shlex.split(gen["command"])
    assert command == ["loyalty", "generate", "--rate", "200", "--customers", "10000", "--duration", "3600"]
    assert environment(gen)["KAFKA_BOOTSTRAP"] == environment(services(compose)["worker-1"])["KAFKA_BOOTSTRAP"]


def test_the_sinks_run_in_a_service_of_their_own(compose: dict[str, Any]) -> None:
    # The production shape: workers write no store; the sinks service writes both, in the
    # workers' namespace (consumer groups `{LOYALTY_APP_ID}-sink-*`, the same topics).
    sinks = sinks_services(compose)
    assert list(sinks) == ["sinks"]
    svc = sinks["sinks"]
    assert svc["command"] == ["loyalty", "sinks"] and "build" in svc
    assert all(depends_on(svc).get(infra) == "service_healthy" for infra in ("kafka", "redis", "postgres"))
    assert "6066" in svc["healthcheck"]["test"][-1] and "/health" in svc["healthcheck"]["test"][-1]
    fields = {name.upper() for name in Settings.model_fields}
    env = environment(svc)
    assert set(env) >= WORKER_ENV - {"API_TOKEN"} and set(env) <= fields
    settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
    for name, worker in workers(compose).items():
        worker_settings = Settings.model_validate({k.lower(): v for k, v in environment(worker).items()})
        assert worker_settings.sink_names == [], f"{name} must leave the stores to the sinks service"
        same = ("loyalty_app_id", "loyalty_topic_prefix", "kafka_bootstrap", "redis_url", "database_url")
        assert {k: getattr(worker_settings, k) for k in same} == {k: getattr(settings, k) for k in same}, name


def test_prometheus_scrapes_every_worker(compose: dict[str, Any]) -> None:
    prom = services(compose)["prometheus"]
    config_in_container = container_path_of(prom, PROMETHEUS)
    command = prom.get("command") or []
    assert f"--config.file={config_in_container}" in command or config_in_container == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            targets |= set(static["targets"])
    scraped = {**workers(compose), **sinks_services(compose)}
    expected = {f"{name}:{environment(svc)['WEB_PORT']}" for name, svc in scraped.items()}
    assert targets == expected
    assert all(t.endswith(":6066") for t in targets)


def test_prometheus_in_compose_loads_the_alert_rules(compose: dict[str, Any]) -> None:
    prom = services(compose)["prometheus"]
    config_dir = PurePosixPath(container_path_of(prom, PROMETHEUS)).parent
    rule_files = yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    assert rule_files, "prometheus.yml loads no rule files"
    for name in rule_files:
        in_container = config_dir / name  # Prometheus reads a relative rule file from the config's folder
        host = PROMETHEUS.parent / name
        assert host.is_file(), f"{name}: no {host.relative_to(ROOT)}"
        assert container_path_of(prom, host) == str(in_container), f"{host.relative_to(ROOT)} not at {in_container}"
    assert (PROMETHEUS.parent / "alerts.yml").name in rule_files


def test_grafana_knows_prometheus_scrape_interval() -> None:
    # Grafana builds $__rate_interval on the datasource's timeInterval (15 s when unset).
    (datasource,) = [
        ds
        for f in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
        if ds["type"] == "prometheus"
    ]
    assert datasource["jsonData"]["timeInterval"] == yaml.safe_load(PROMETHEUS.read_text())["global"]["scrape_interval"]


def test_grafana_provisions_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    assert container_path_of(grafana, PROVISIONING) == "/etc/grafana/provisioning"
    dashboards_in_container = container_path_of(grafana, DASHBOARD.parent)
    datasources = [
        ds
        for f in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    prom = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prom) == 1
    assert urlsplit(prom[0]["url"]).hostname == "prometheus"
    providers = [
        p
        for f in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [dashboards_in_container]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {prom[0]["uid"]}


# ---------------------------------------------------------------------------- (b) dashboard


def exported_metric_names() -> set[str]:
    """Every sample name the worker's registry can expose, whether or not it has a sample yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}


def metric_names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: not functions, keywords, label names or Grafana variables."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables ($__rate_interval, ${job})
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(loyalty_end_to_end_seconds_bucket{job="w"}[5m])))',
            {"loyalty_end_to_end_seconds_bucket"},
        ),
        ("max by (system, level) (loyalty_customers)", {"loyalty_customers"}),
        ("sum without (instance) (rate(x_total[$__rate_interval])) / on(sink) group_left y", {"x_total", "y"}),
        ('count(up{job=~"loyalty.*"} offset 5m) > bool 1e3', {"up"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names_in(expr) == names


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if "expr" in t]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert {"loyalty_receipts_total", "loyalty_end_to_end_seconds_bucket", "loyalty_customers"} <= exported
    exprs = dashboard_exprs()
    assert exprs, "the dashboard has no queries"
    unknown = {}
    for title, expr in exprs:
        names = metric_names_in(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        if names - exported:
            unknown[f"{title}: {expr}"] = sorted(names - exported)
    assert unknown == {}


def test_a_misspelt_metric_in_the_dashboard_would_be_caught() -> None:
    assert not metric_names_in("sum(rate(loyalty_receipt_total[1m]))") <= exported_metric_names()


def test_dashboard_covers_the_operating_metrics() -> None:
    used = set().union(*(metric_names_in(expr) for _, expr in dashboard_exprs()))
    required = {
        "loyalty_receipts_total",
        "loyalty_end_to_end_seconds_bucket",
        "loyalty_processing_seconds_bucket",
        "loyalty_consumer_lag",
        "loyalty_status_changes_total",
        "loyalty_customers",
        "loyalty_offers_total",
        "loyalty_dead_letters_total",
        "loyalty_sink_write_errors_total",
        "loyalty_sink_retries_total",
        "loyalty_sink_buffer_depth",
        "loyalty_sink_lag",
        "loyalty_sink_up",
        "loyalty_sink_consumer_lag",
        "loyalty_sink_oldest_unwritten_seconds",
    }
    assert required - used == set()
    customers = [expr for _, expr in dashboard_exprs() if "loyalty_customers" in metric_names_in(expr)]
    assert customers and all(re.search(r"\bmax\s+by\s*\(\s*system\s*,\s*level\s*\)", e) for e in customers)


# ---------------------------------------------------------------------------- (c) Dockerfile vs make demo


def parse_makefile(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(prerequisites, recipe lines) per target, with `$(VAR)` expanded."""
    variables: dict[str, str] = {}
    prereqs: dict[str, list[str]] = {}
    recipes: dict[str, list[str]] = {}
    current: str | None = None

    def expand(text: str) -> str:
        for _ in range(10):
            text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
        return text

    for line in path.read_text().splitlines():
        if line.startswith("\t") and current is not None:
            recipes[current].append(expand(line.strip()))
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assign = re.match(r"^(\w+)\s*(?::=|\?=|=)\s*(.*)$", line)
        if assign:
            variables[assign.group(1)] = expand(assign.group(2).split("#")[0].strip())
            current = None
            continue
        rule = re.match(r"^([^:=\s][^:=]*):(?!=)(.*)$", line)
        if rule:
            normal = rule.group(2).split("|")[0]
            for target in expand(rule.group(1)).split():
                prereqs[target] = expand(normal).split()
                recipes[target] = []
            current = expand(rule.group(1)).split()[0]
    return prereqs, recipes


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not pending:
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def demo_install_target() -> str:
    prereqs, recipes = parse_makefile(ROOT / "Makefile")
    installs = [p for p in prereqs["demo"] if any(re.search(r"pip install .*-e '?\.", r) for r in recipes.get(p, []))]
    assert len(installs) == 1, f"`make demo` should install through one target, found {installs}"
    return installs[0]


def test_makefile_parser_finds_the_demo_install_target() -> None:
    prereqs, recipes = parse_makefile(ROOT / "Makefile")
    assert demo_install_target() == ".venv/.installed"
    assert any(r.startswith(".venv/bin/loyalty demo") for r in recipes["demo"])
    assert "demo" not in prereqs[".venv/.installed"]


def test_dockerfile_installs_like_make_demo() -> None:
    target = demo_install_target()
    steps = parse_dockerfile(ROOT / "Dockerfile")
    runs = [args for kw, args in steps if kw == "RUN"]
    make_runs = [shlex.split(r) for r in runs if re.search(r"(^|&&\s*)make\b", r)]
    assert make_runs, "the Dockerfile does not install the project with make"
    assert all(cmd[0] == "make" and cmd[1:] == [target] for cmd in make_runs), make_runs
    assert not any(re.search(r"\bpip\S* install\b", r) for r in runs), "install only through the Makefile"
    kws = [kw for kw, _ in steps]
    make_at = next(i for i, (kw, a) in enumerate(steps) if kw == "RUN" and a.startswith("make "))
    assert any(kw == "RUN" and re.search(r"apt-get install .*\bmake\b", a) for kw, a in steps[:make_at])
    assert "COPY" in kws[:make_at]


def test_dockerfile_runs_the_worker_as_a_non_root_user() -> None:
    steps = parse_dockerfile(ROOT / "Dockerfile")
    args = {kw: a for kw, a in steps}  # the last of each
    assert steps[0] == ("FROM", "python:3.11-slim")
    workdir = args["WORKDIR"]
    env = " ".join(a for kw, a in steps if kw == "ENV")
    assert re.search(rf"PATH={re.escape(workdir)}/\.venv/bin:\$PATH", env), env
    assert args["USER"] not in {"root", "0"}
    assert "6066" in args["EXPOSE"].split()
    assert json.loads(args["CMD"]) == ["loyalty", "worker"]


def test_dockerignore_keeps_host_venv_out() -> None:
    # A copied .venv/.installed would make `make` skip the install inside the image.
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert ".venv" in patterns
    assert "pyproject.toml" not in patterns and "README.md" not in patterns


def test_interpolation_needs_defaults() -> None:
    assert interpolate({"a": ["${X:-1}", "$$HOME"]}) == {"a": ["1", "$HOME"]}
    with pytest.raises(AssertionError):
        interpolate("${NO_DEFAULT}")
