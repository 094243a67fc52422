"""The shipped alerting rules (deploy/prometheus/alerts.yml), checked by promtool as shipped.

`promtool check rules` validates them; `promtool test rules` runs each alert over
synthetic series with the shipped `for:` durations and thresholds (the
integration tests in tests/integration/test_alerts.py provoke each alert for
real, with those shortened). Every alert has a summary, a runbook line and an
entry in the README's Operations section.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.local.prometheus import MonitoringError, load_shipped, local_config
from tests.prometheus import ALERTS, TEST_FOR, TEST_WINDOW, alert_names, promtool_binary, rules_for_tests, shipped_rules

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules_and_the_config() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    done = promtool("check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_every_alert_says_what_it_is_how_bad_and_where_its_runbook_is() -> None:
    rules = [rule for group in shipped_rules()["groups"] for rule in group["rules"]]
    assert len(rules) >= 7
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Loyalty[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"README.md, Operations: {name}", name


def operations_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Operations\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Operations' section"
    return match.group(1)


def test_the_readme_operations_section_has_every_alert() -> None:
    section = operations_section()
    for name in alert_names(shipped_rules()):
        rows = [line for line in section.splitlines() if line.startswith(f"| `{name}`")]
        assert len(rows) == 1, f"README, Operations: no row for {name}"
        meaning, action = (cell.strip() for cell in rows[0].strip("|").split("|")[1:3])
        assert meaning and action, f"README, Operations: {name} needs what it means and what to do"


def test_the_test_copy_shortens_every_duration_and_nothing_else() -> None:
    shipped = shipped_rules()
    copy = rules_for_tests(shipped, {"LoyaltySinkBehind": ("> 300", "> 5")})
    pairs = zip(
        (r for g in shipped["groups"] for r in g["rules"]), (r for g in copy["groups"] for r in g["rules"]), strict=True
    )
    for before, after in pairs:
        assert after.get("for") == (TEST_FOR if "for" in before else None)
        assert re.findall(r"\[[^\]]*\]", after["expr"]) == [f"[{TEST_WINDOW}]"] * len(
            re.findall(r"\[[^\]]*\]", before["expr"])
        )
        assert {k: v for k, v in after.items() if k not in {"for", "expr"}} == {
            k: v for k, v in before.items() if k not in {"for", "expr"}
        }
    behind = next(r for g in copy["groups"] for r in g["rules"] if r["alert"] == "LoyaltySinkBehind")
    assert behind["expr"].strip() == "loyalty_sink_oldest_unwritten_seconds > 5"
    with pytest.raises(AssertionError):
        rules_for_tests(shipped, {"LoyaltySinkBehind": ("> 999", "> 5")})


def test_the_local_config_keeps_the_shipped_one_but_its_targets() -> None:
    shipped = load_shipped()
    targets = {"loyalty-worker": ["127.0.0.1:7001"], "loyalty-sinks": ["127.0.0.1:7002"]}
    local = local_config(shipped, targets, scrape_interval="1s")
    assert [job["job_name"] for job in local["scrape_configs"]] == [j["job_name"] for j in shipped["scrape_configs"]]
    for job, original in zip(local["scrape_configs"], shipped["scrape_configs"], strict=True):
        assert job["static_configs"] == [{"targets": targets[job["job_name"]]}]
        assert {k: v for k, v in job.items() if k != "static_configs"} == {
            k: v for k, v in original.items() if k != "static_configs"
        }
    assert local["rule_files"] == [str(ALERTS.resolve())]
    assert local["global"]["scrape_interval"] == "1s"
    assert local["global"]["evaluation_interval"] == shipped["global"]["evaluation_interval"]
    with pytest.raises(MonitoringError, match="no local targets for job"):
        local_config(shipped, {"loyalty-worker": ["127.0.0.1:7001"]})
    with pytest.raises(MonitoringError, match="no job loyalty-typo"):
        local_config(shipped, {**targets, "loyalty-typo": []})


# ---------------------------------------------------------------------------- promtool test rules

W = 'job="loyalty-worker", instance="w1:6066"'


def alert(name: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    shipped = next(r for g in shipped_rules()["groups"] for r in g["rules"] if r["alert"] == name)
    return {
        "exp_labels": {**labels, "severity": shipped["labels"]["severity"]},
        "exp_annotations": {"summary": summary, "runbook": f"README.md, Operations: {name}"},
    }


def case(series: list[tuple[str, str]], interval: str, checks: list[tuple[str, str, list[dict[str, Any]]]]) -> Any:
    return {
        "interval": interval,
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": t, "alertname": n, "exp_alerts": a} for t, n, a in checks],
    }


CASES = {
    "a process that does not answer, after a minute": case(
        [('up{job="loyalty-sinks", instance="s1:6068"}', "1 0 0 0"), (f"up{{{W}}}", "1 1 1 1")],
        "1m",
        [
            ("1m", "LoyaltyProcessDown", []),
            (
                "2m",
                "LoyaltyProcessDown",
                [
                    alert(
                        "LoyaltyProcessDown",
                        {"alertname": "LoyaltyProcessDown", "job": "loyalty-sinks", "instance": "s1:6068"},
                        "loyalty-sinks at s1:6068 does not answer /metrics: stopped, crashed or hung",
                    )
                ],
            ),
        ],
    ),
    "a worker that owns partitions and processes nothing for ten minutes, for five more": case(
        [
            (f"loyalty_processing_seconds_count{{{W}}}", "0+10x5 50x30"),
            (f'loyalty_consumer_lag{{{W}, topic="loyalty-inputs", partition="0"}}', "0x35"),
            ('loyalty_processing_seconds_count{job="loyalty-worker", instance="idle:6066"}', "0+1x35"),
            ('loyalty_consumer_lag{job="loyalty-worker", instance="idle:6066", topic="loyalty-inputs"}', "0x35"),
            ('loyalty_processing_seconds_count{job="loyalty-worker", instance="spare:6066"}', "0x35"),
        ],
        "1m",
        [
            ("19m", "LoyaltyWorkerStalled", []),
            (
                "20m",
                "LoyaltyWorkerStalled",
                [
                    alert(
                        "LoyaltyWorkerStalled",
                        {"alertname": "LoyaltyWorkerStalled", "job": "loyalty-worker", "instance": "w1:6066"},
                        "w1:6066 owns partitions but has processed nothing, not even its clock ticks, for 10 minutes",
                    )
                ],
            ),
        ],
    ),
    "a backlog growing for ten minutes; not one that shrinks, nor a small one": case(
        [
            (f'loyalty_consumer_lag{{{W}, topic="receipts", partition="0"}}', "0+200x30"),
            (f'loyalty_consumer_lag{{{W}, topic="status-commands", partition="0"}}', "9000-200x30"),
            (f'loyalty_consumer_lag{{{W}, topic="customer-events", partition="0"}}', "0+10x30"),
        ],
        "1m",
        [
            ("12m", "LoyaltyConsumerLagGrowing", []),
            (
                "13m",
                "LoyaltyConsumerLagGrowing",
                [
                    alert(
                        "LoyaltyConsumerLagGrowing",
                        {"alertname": "LoyaltyConsumerLagGrowing", "topic": "receipts"},
                        "2.6k records of receipts wait, and the backlog keeps growing",
                    )
                ],
            ),
        ],
    ),
    "p99 above a second for five minutes": case(
        [
            (f'loyalty_end_to_end_seconds_bucket{{{W}, le="0.5"}}', "0+50x20"),
            (f'loyalty_end_to_end_seconds_bucket{{{W}, le="1.0"}}', "0+90x20"),
            (f'loyalty_end_to_end_seconds_bucket{{{W}, le="2.5"}}', "0+100x20"),
            (f'loyalty_end_to_end_seconds_bucket{{{W}, le="+Inf"}}', "0+100x20"),
        ],
        "1m",
        [
            ("5m", "LoyaltyReceiptLatencyHigh", []),
            (
                "6m",
                "LoyaltyReceiptLatencyHigh",
                [
                    alert(
                        "LoyaltyReceiptLatencyHigh",
                        {"alertname": "LoyaltyReceiptLatencyHigh"},
                        "Receipt to receipt message p99 is 2.35s (above 1 s)",
                    )
                ],
            ),
        ],
    ),
    "the first dead letter at once, gone ten minutes later": case(
        [(f'loyalty_dead_letters_total{{{W}, topic="receipts"}}', "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1")],
        "1m",
        [
            ("1m", "LoyaltyDeadLetters", []),
            (
                "2m",
                "LoyaltyDeadLetters",
                [
                    alert(
                        "LoyaltyDeadLetters",
                        {"alertname": "LoyaltyDeadLetters", "topic": "receipts"},
                        "Dead letters from receipts in the last 10 minutes: about 1",
                    )
                ],
            ),
            ("13m", "LoyaltyDeadLetters", []),
        ],
    ),
    "a sink down for two minutes, resolved when it writes again": case(
        [(f'loyalty_sink_up{{{W}, sink="postgres"}}', "1 1 0 0 0 0 1 1")],
        "1m",
        [
            ("3m", "LoyaltySinkDown", []),
            (
                "4m",
                "LoyaltySinkDown",
                [
                    alert(
                        "LoyaltySinkDown",
                        {
                            "alertname": "LoyaltySinkDown",
                            "sink": "postgres",
                            "job": "loyalty-worker",
                            "instance": "w1:6066",
                        },
                        "The postgres sink of w1:6066 cannot write; its records wait in Kafka",
                    )
                ],
            ),
            ("6m", "LoyaltySinkDown", []),
        ],
    ),
    "an unwritten event older than five minutes, for a minute": case(
        [(f'loyalty_sink_oldest_unwritten_seconds{{{W}, sink="redis"}}', "0+60x10")],
        "1m",
        [
            ("6m", "LoyaltySinkBehind", []),
            (
                "7m",
                "LoyaltySinkBehind",
                [
                    alert(
                        "LoyaltySinkBehind",
                        {
                            "alertname": "LoyaltySinkBehind",
                            "sink": "redis",
                            "job": "loyalty-worker",
                            "instance": "w1:6066",
                        },
                        "The redis sink's oldest unwritten event is 7m 0s old",
                    )
                ],
            ),
        ],
    ),
    "a close walk running for thirty minutes; not one that finishes": case(
        [
            (f'loyalty_close_walk_remaining{{{W}, partition="2"}}', "1000x40"),
            (f'loyalty_close_walk_remaining{{{W}, partition="3"}}', "1000 500 0x40"),
        ],
        "1m",
        [
            ("29m", "LoyaltyCloseWalkNotFinished", []),
            (
                "30m",
                "LoyaltyCloseWalkNotFinished",
                [
                    alert(
                        "LoyaltyCloseWalkNotFinished",
                        {
                            "alertname": "LoyaltyCloseWalkNotFinished",
                            "partition": "2",
                            "job": "loyalty-worker",
                            "instance": "w1:6066",
                        },
                        "The period-close walk of partition 2 has run for 30 minutes and is not done",
                    )
                ],
            ),
        ],
    ),
}


def test_every_alert_has_a_promtool_case() -> None:
    tested = {check["alertname"] for c in CASES.values() for check in c["alert_rule_test"]}
    assert tested == set(alert_names(shipped_rules()))


def test_the_shipped_rules_fire_on_their_conditions_after_their_durations(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [str(ALERTS.resolve())], "evaluation_interval": "1m", "tests": list(CASES.values())},
            sort_keys=False,
        )
    )
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr
