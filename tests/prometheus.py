"""A real Prometheus for the tests: installed where missing, run from the project's deploy files.

`prometheus_binary()` and `promtool_binary()` install Debian's `prometheus` package
when the binary is missing (CI runs as root on Debian), and skip the test, saying
why, where that cannot be done. `PrometheusUnderTest` runs a server through
`deploy/prometheus/prometheus.yml` (streams/local/prometheus.py) and reads its HTTP API.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout

from streams.local.prometheus import PROMETHEUS_DIR, LocalPrometheus, load_shipped, local_config

ALERTS = PROMETHEUS_DIR / "alerts.yml"

#: The alert tests' copy of the rules: every `for:` and every range window shortened to
#: these, so an alert fires within seconds of its cause and resolves soon after it is gone.
TEST_FOR = "5s"
TEST_WINDOW = "20s"


def _installed(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip(f"{name} is not installed and there is no apt-get to install Debian's 'prometheus' package")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "prometheus"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot install Debian's 'prometheus' package: {' '.join(command)}: {done.stderr[-500:]}")
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"Debian's 'prometheus' package installed no '{name}' binary on PATH")
    return found


def prometheus_binary() -> str:
    return _installed("prometheus")


def promtool_binary() -> str:
    return _installed("promtool")


def rules_for_tests(
    shipped: Mapping[str, Any], thresholds: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, Any]:
    """The shipped rules with each `for:` set to TEST_FOR and each range window to TEST_WINDOW.

    `thresholds`: alert name -> (text in its expression, its replacement), e.g. an age
    threshold of five minutes made five seconds; the text must be there.
    """
    thresholds = dict(thresholds or {})
    groups = []
    for group in shipped["groups"]:
        rules = []
        for rule in group["rules"]:
            rule = dict(rule)
            expr = re.sub(r"\[\s*\d+[smhdwy]\s*\]", f"[{TEST_WINDOW}]", rule["expr"])
            if rule.get("alert") in thresholds:
                old, new = thresholds.pop(rule["alert"])
                assert old in expr, f"{rule['alert']}: {old!r} is not in {expr!r}"
                expr = expr.replace(old, new)
            rule["expr"] = expr
            if "for" in rule:
                rule["for"] = TEST_FOR
            rules.append(rule)
        groups.append({**group, "rules": rules})
    assert not thresholds, f"no such alerts: {sorted(thresholds)}"
    return {"groups": groups}


def shipped_rules() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(rules, dict)
    return rules


def alert_names(rules: Mapping[str, Any]) -> list[str]:
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


class PrometheusUnderTest:
    """A Prometheus scraping local processes through the shipped prometheus.yml."""

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        rules: Mapping[str, Any] | None = None,
        scrape_interval: str | None = None,
        evaluation_interval: str | None = None,
        only_these_jobs: bool = False,
    ) -> None:
        """`targets`: job -> host:port; every job of the shipped file needs some, unless
        `only_these_jobs` (a test that runs only some of the processes)."""
        rule_files = None
        if rules is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "alerts.yml"
            path.write_text(yaml.safe_dump(dict(rules), sort_keys=False), encoding="utf-8")
            rule_files = [path]
        config = local_config(
            load_shipped(),
            targets,
            rule_files=rule_files,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            drop_other_jobs=only_these_jobs,
        )
        self.server = LocalPrometheus(prometheus_binary(), config, workdir)
        self.url = self.server.url
        self.http: ClientSession | None = None

    async def start(self) -> PrometheusUnderTest:
        await asyncio.to_thread(self.server.start)
        self.http = ClientSession(timeout=ClientTimeout(total=10))
        return self

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        await asyncio.to_thread(self.server.stop)

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        assert self.http is not None, "start() first"
        async with self.http.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query", {"query": expr})
        return list(data["result"])

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return list((await self._get("/api/v1/query_range", params))["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return list((await self._get("/api/v1/alerts"))["alerts"])

    async def rule_groups(self) -> list[dict[str, Any]]:
        return list((await self._get("/api/v1/rules"))["groups"])

    async def targets_up(self) -> dict[str, str]:
        """Each scraped target's health (`up`, `down`, `unknown`), by job and instance."""
        active = (await self._get("/api/v1/targets"))["activeTargets"]
        return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}

    async def alert_states(self, name: str, labels: Mapping[str, str] | None = None) -> set[str]:
        """The states (`pending`, `firing`) of the alerts of this name whose labels include `labels`."""
        try:
            found = await self.alerts()
        except (TimeoutError, ClientError, OSError):
            return set()
        wanted = {"alertname": name, **(labels or {})}
        return {a["state"] for a in found if wanted.items() <= a["labels"].items()}

    async def wait_for_alert(
        self,
        name: str,
        state: str,
        *,
        labels: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        seen: set[str] | None = None,
    ) -> set[str]:
        """Waits until the alert is in `state` (`firing`, or `inactive`: neither pending nor firing).

        Returns every state seen meanwhile (adds them to `seen` too)."""
        seen = set() if seen is None else seen
        deadline = time.monotonic() + timeout
        while True:
            states = await self.alert_states(name, labels)
            seen |= states
            if (state == "inactive" and not states) or state in states:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} {dict(labels or {})} not {state} after {timeout:.0f}s (states seen: {sorted(seen)}); "
                    f"active alerts: {await self._alerts_summary()}; targets: {await self._targets_summary()}"
                )
            await asyncio.sleep(0.5)

    async def _alerts_summary(self) -> str:
        try:
            return str([(a["labels"], a["state"], a.get("value")) for a in await self.alerts()])
        except (TimeoutError, ClientError, OSError, AssertionError) as exc:
            return repr(exc)

    async def _targets_summary(self) -> str:
        try:
            return str(await self.targets_up())
        except (TimeoutError, ClientError, OSError, AssertionError, KeyError) as exc:
            return repr(exc)

    async def wait_for_value(
        self, expr: str, predicate: Callable[[float], bool], timeout: float = 90.0, what: str = ""
    ) -> float:
        """Waits until the instant query yields one series whose value satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        last: list[float] | str = "nothing yet"
        while True:
            try:
                values = [float(r["value"][1]) for r in await self.query(expr)]
                last = values
                if len(values) == 1 and predicate(values[0]):
                    return values[0]
            except (TimeoutError, ClientError, OSError):
                last = "no answer"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or expr}: last answer {last} after {timeout:.0f}s")
            await asyncio.sleep(0.5)
