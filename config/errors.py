"""The one error a bad configuration raises, listing every problem at once."""

from collections.abc import Sequence


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per thing to fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")
