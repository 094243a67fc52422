"""A Prometheus server on this machine, configured from the project's own deploy files.

`loyalty demo --prometheus` and the tests run Prometheus through
`deploy/prometheus/prometheus.yml` and its rule files, with only what must change
on one machine changed: each job's targets (the local ports), optionally the
rule files (the tests' copy with shortened durations) and the intervals. So a
renamed metric, a wrong label or a broken rule shows up here before it reaches
production.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from models.errors import LoyaltyError
from streams.local.service import free_port

#: The project's Prometheus files; present in a source checkout (the way `make` installs it).
PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"


class MonitoringError(LoyaltyError):
    """The local Prometheus could not be configured or did not start."""


def find_prometheus() -> str | None:
    """The `prometheus` binary on PATH (Debian: `apt-get install prometheus`), or None."""
    return shutil.which("prometheus")


def load_shipped(path: Path = PROMETHEUS_CONFIG) -> dict[str, Any]:
    if not path.is_file():
        raise MonitoringError(f"{path} is missing: run from a source checkout of the project")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise MonitoringError(f"{path}: not a mapping")
    return config


def local_config(
    shipped: Mapping[str, Any],
    targets: Mapping[str, Sequence[str]],
    *,
    config_dir: Path = PROMETHEUS_DIR,
    rule_files: Sequence[Path] | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    drop_other_jobs: bool = False,
) -> dict[str, Any]:
    """The shipped configuration with each job's targets replaced by `targets[job]`.

    A job of the shipped file with no local targets raises MonitoringError, unless
    `drop_other_jobs` (the demo runs only some of the processes); a job in `targets`
    the file lacks raises too. Rule files are made absolute (Prometheus reads
    relative ones from the config file's folder), or replaced by `rule_files`.
    """
    config = {key: value for key, value in shipped.items() if key not in {"scrape_configs", "rule_files"}}
    jobs = {job["job_name"]: job for job in shipped.get("scrape_configs") or []}
    unknown = sorted(set(targets) - set(jobs))
    if unknown:
        raise MonitoringError(f"no job {', '.join(unknown)} in the shipped prometheus.yml (it has {sorted(jobs)})")
    missing = sorted(set(jobs) - set(targets))
    if missing and not drop_other_jobs:
        raise MonitoringError(f"no local targets for job(s) {', '.join(missing)} of the shipped prometheus.yml")
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": list(targets[name])}]} for name, job in jobs.items() if name in targets
    ]
    if rule_files is None:
        rule_files = [config_dir / name for name in shipped.get("rule_files") or []]
    config["rule_files"] = [str(Path(path).resolve()) for path in rule_files]
    intervals = dict(config.get("global") or {})
    if scrape_interval is not None:
        intervals["scrape_interval"] = scrape_interval
        intervals.pop("scrape_timeout", None)  # may not exceed the interval; it defaults to it
    if evaluation_interval is not None:
        intervals["evaluation_interval"] = evaluation_interval
    config["global"] = intervals
    return config


class LocalPrometheus:
    """A Prometheus server on 127.0.0.1 with its data in `workdir`; `start()` returns once it is ready."""

    def __init__(self, binary: str, config: Mapping[str, Any], workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.config = dict(config)
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None:
                raise MonitoringError(f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise MonitoringError(f"prometheus was not ready in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now (`labels`, `state`, `annotations`, ...)."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=5) as answer:
                body = json.load(answer)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MonitoringError(f"{self.url}/api/v1/alerts: {exc}") from exc
        return list(body["data"]["alerts"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
