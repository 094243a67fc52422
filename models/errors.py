"""The project's exceptions: one base, small subclasses with messages a user can act on."""

from __future__ import annotations


class LoyaltyError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(LoyaltyError):
    """The configuration is invalid; `problems` lists each one as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class InvalidInput(LoyaltyError):
    """An input record cannot be processed; it goes to the dead-letter topic with this message."""


class InvalidPeriod(InvalidInput):
    """A period id does not name a period of the given kind."""
