"""Region rules: which region an event belongs to, from runner name, pipeline, path or mirror.

Rules are ordered; the first whose every given glob matches wins; otherwise the default.
Globs are ``fnmatch`` patterns (``*``, ``?``, ``[..]``), case-sensitive; ``path`` globs
match the file path as given and its absolute form.

The TOML shape read by ``RegionRules.from_mapping`` (the ``[analytics.regions]`` table)::

    [analytics.regions]
    default = "eu"                      # region when no rule matches (omit: no region)

    [[analytics.regions.rules]]
    runner = "us-*"                     # glob on the CI runner / agent / node name
    region = "us"

    [[analytics.regions.rules]]
    path = "*/logs/apac/*"              # glob on the log file path
    region = "apac"

    [[analytics.regions.rules]]
    mirror = "mirror-us.internal:5000"  # glob on the mirror host in a registry log
    pipeline = "team-a/*"               # several keys: all must match
    region = "us"

On the command line the same rule is ``--rule runner:us-*=us``; a pattern without a
``field:`` prefix matches any of the four fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

FIELDS = ("runner", "pipeline", "path", "mirror")


class RuleError(ValueError):
    """A region rule that cannot be understood; the message names it."""


@dataclass(frozen=True)
class RegionRule:
    region: str
    runner: str | None = None
    pipeline: str | None = None
    path: str | None = None
    mirror: str | None = None
    any_field: str | None = None  # from a command-line rule without a field prefix

    def matches(
        self, runner: str | None, pipeline: str | None, path: str | None, mirror: str | None
    ) -> bool:
        values = {"runner": runner, "pipeline": pipeline, "path": path, "mirror": mirror}
        if self.any_field is not None:
            return any(v is not None and fnmatchcase(v, self.any_field) for v in values.values())
        checked = False
        for name in FIELDS:
            pattern = getattr(self, name)
            if pattern is None:
                continue
            checked = True
            value = values[name]
            if value is None or not fnmatchcase(value, pattern):
                return False
        return checked


@dataclass
class RegionRules:
    rules: list[RegionRule] = field(default_factory=list)
    default: str | None = None
    force: str | None = None  # ``--region``: every event gets this region
    _cache: dict[tuple[str | None, ...], str | None] = field(default_factory=dict, repr=False)

    def resolve(
        self,
        runner: str | None = None,
        pipeline: str | None = None,
        path: str | None = None,
        mirror: str | None = None,
    ) -> str | None:
        if self.force is not None:
            return self.force
        key = (runner, pipeline, path, mirror)
        if key in self._cache:
            return self._cache[key]
        region = self.default
        for rule in self.rules:
            if rule.matches(runner, pipeline, path, mirror):
                region = rule.region
                break
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = region
        return region

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> RegionRules:
        """Build from the ``[analytics.regions]`` TOML table (shape in the module docstring)."""
        unknown = set(table) - {"default", "rules"}
        if unknown:
            raise RuleError(f"analytics.regions: unknown key(s) {', '.join(sorted(unknown))}")
        default = table.get("default")
        if default is not None and not isinstance(default, str):
            raise RuleError("analytics.regions.default must be a string")
        rules = []
        for i, raw in enumerate(table.get("rules", [])):
            where = f"analytics.regions.rules[{i}]"
            if not isinstance(raw, Mapping):
                raise RuleError(f"{where} must be a table")
            extra = set(raw) - {"region", *FIELDS}
            if extra:
                raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
            region = raw.get("region")
            if not isinstance(region, str) or not region:
                raise RuleError(f"{where}: 'region' (a string) is required")
            globs = {k: raw[k] for k in FIELDS if k in raw}
            if not globs or not all(isinstance(v, str) for v in globs.values()):
                raise RuleError(f"{where}: give at least one of {', '.join(FIELDS)} as a string")
            rules.append(RegionRule(region=region, **globs))
        return cls(rules=rules, default=default)

    def with_cli_rules(self, specs: list[str]) -> RegionRules:
        """Prepend ``[field:]glob=REGION`` rules from the command line (they win)."""
        parsed = [parse_rule(s) for s in specs]
        return RegionRules(rules=parsed + self.rules, default=self.default, force=self.force)


def parse_rule(spec: str) -> RegionRule:
    pattern, eq, region = spec.rpartition("=")
    if not eq or not pattern or not region:
        raise RuleError(f"region rule {spec!r}: expected [FIELD:]GLOB=REGION")
    name, colon, glob = pattern.partition(":")
    if colon and name in FIELDS:
        if not glob:
            raise RuleError(f"region rule {spec!r}: empty glob after {name}:")
        return RegionRule(region=region, **{name: glob})
    return RegionRule(region=region, any_field=pattern)
