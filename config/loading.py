"""Reads `loyalty.yaml` into a `LoyaltyConfig`, or fails naming every bad field by path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.errors import ConfigError
from models.schema import LoyaltyConfig

DEFAULT_CONFIG = Path(__file__).with_name("loyalty.yaml")
_RELATIVE_PATH = re.compile(r"^([A-Za-z_\[][\w\[\].]*): (.*)$", re.DOTALL)


def load_config(path: str | Path = DEFAULT_CONFIG) -> LoyaltyConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> LoyaltyConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    try:
        return LoyaltyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        if _only_failed_items(error):
            continue  # pydantic's echo of item errors already listed: "at least 1 item ... not 0"
        base = _format_loc(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        for line in message.split("\n"):
            match = _RELATIVE_PATH.match(line)
            if match:
                relative = match.group(1)
                path = f"{base}{'' if relative.startswith('[') else '.'}{relative}" if base else relative
                problems.append(f"{path}: {match.group(2)}")
            else:
                problems.append(f"{base or '<root>'}: {line}")
    return problems


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "union[", "tagged-union[")) or "[" in str(part):
            continue  # pydantic's names for union branches say nothing to a marketer
        else:
            out += f".{part}" if out else str(part)
    return out


def _only_failed_items(error: Any) -> bool:
    """A `too_short` error on a list that was long enough, because its items failed validation."""
    if error.get("type") != "too_short":
        return False
    given, ctx = error.get("input"), error.get("ctx") or {}
    return isinstance(given, list | tuple) and len(given) >= ctx.get("min_length", 0)
