"""Ground truth of a synthetic CI fleet: who pulls which image when (pure, in memory).

Deterministic by seed. Every parameter is in :class:`Params`; the shape follows published
registry-workload facts (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from analytics.generate.catalogue import IMAGES, MIGRATIONS, Catalogue, build, canonical

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ADHOC_ROLES = ("lang", "base", "service", "tool")


@dataclass(frozen=True)
class Params:
    weeks: int = 8
    seed: int = 1
    start: datetime = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
    regions: tuple[str, ...] = ("eu", "us")
    utc_offset: tuple[int, ...] = (1, -5)  # office hours are local
    pipelines_per_region: int = 40
    zipf_s: float = 1.2  # image popularity exponent within a role (Zipf-like)
    activity_sigma: float = 1.0  # log-normal spread of pipeline run rates (heavy tail)
    runs_per_office_hour: float = 0.5  # median commit-pipeline rate on a weekday hour
    weekend_factor: float = 0.05  # weekend commit activity relative to weekdays
    share_nightly: float = 0.2
    share_release: float = 0.08
    release_weekday: int = 3  # Thursday release trains
    release_runs: tuple[int, int] = (8, 30)
    adhoc_per_office_hour: float = 6.0  # pulls through the mirror not seen in CI logs
    adoptions_per_week: float = 1.5  # per region: a pipeline starts using a new image
    new_pipelines_per_week: float = 0.4  # per region: a new project with its own images
    adoption_delay_hours: float = 6.0  # mean delay from the commit naming it to first run
    migration_share: float = 0.7  # of the users of an old tag who move to the new tag
    migration_spread_days: int = 14
    bursts_per_week: float = 1.0  # per region: retry storms / matrix rebuilds
    static_coverage: float = 0.85  # share of image uses named in a repository file
    move_weekday: int = 1  # weekly rebuilds move tags on Tuesdays
    present_probability: dict[str, float] = field(
        default_factory=lambda: {
            "github": 0.0,
            "gitlab": 0.35,
            "jenkins": 0.5,
            "kubelet": 0.6,
            "distribution": 0.0,
        }
    )


@dataclass
class Use:
    ref: str  # canonical name:tag
    role: str  # job | service | base | tool | deploy | script
    since: datetime
    until: datetime | None = None
    named: bool = True  # appears in a repository file (static reference)


@dataclass
class Pipeline:
    name: str
    region: str
    system: str  # github | gitlab | jenkins | kubelet
    kind: str  # commit | nightly | release
    rate: float
    hour: int
    uses: list[Use]
    since: datetime


@dataclass
class Workload:
    params: Params
    catalogue: Catalogue
    pipelines: list[Pipeline]
    pulls: pd.DataFrame  # timestamp, region, pipeline, run, image, tag, digest, source, pulled
    static: pd.DataFrame  # file, line, reference, image, tag, first_seen, removed
    labels: dict[tuple[str, pd.Timestamp], set[str]]  # (region, day) -> kinds
    adhoc_share: dict[str, float] = field(default_factory=dict)  # ref -> share of ad-hoc pulls


# Office-hour profile (local hours 0..23): ramps up at 8, peaks 9-11 and 14-16.
_OFFICE = np.array(
    [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0.3,
        0.8,
        1.4,
        1.5,
        1.2,
        0.6,
        0.9,
        1.3,
        1.4,
        1.1,
        0.7,
        0.3,
        0.1,
        0,
        0,
        0,
        0,
    ]
)
_SYSTEMS = ("github", "gitlab", "jenkins")
_SOURCE_FOR_BASE = {"github": "buildkit", "gitlab": "podman", "jenkins": "docker"}


class _Gen:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.rng = np.random.default_rng(p.seed)
        moving = [r for r, *_ in IMAGES if r.split(":")[0] in ("python", "node", "golang")]
        moving += [r for r, _, _, kind in IMAGES if kind == "deploy"]
        self.catalogue = build(p.start, p.weeks, moving, p.move_weekday)
        by_role: dict[str, list[str]] = {}
        for short, _, _, kind in IMAGES:
            by_role.setdefault(kind, []).append(canonical(short))
        self.newer = {canonical(a): canonical(b) for a, b in MIGRATIONS}
        olds = set(self.newer.values())
        # Popularity order per role is drawn by seed; newer tags start unused (migrations).
        self.pool = {
            role: [r for r in self.rng.permutation(refs).tolist() if r not in olds]
            for role, refs in by_role.items()
        }
        # Images nobody uses at the start: adopted mid-history (a quarter of the services
        # and tools, drawn by seed).
        self.held = {
            role: refs[-max(1, len(refs) // 4) :]
            for role, refs in self.pool.items()
            if role in ("service", "tool")
        }
        for role, refs in self.held.items():
            self.pool[role] = [r for r in self.pool[role] if r not in refs]
        self.end = p.start + timedelta(weeks=p.weeks)
        self.adopted: set[tuple[str, str]] = set()

    def zipf_weights(
        self, role: str, exclude: Collection[str] = frozenset()
    ) -> tuple[list[str], np.ndarray]:
        refs = [r for r in self.pool[role] if r not in exclude] or self.pool[role]
        w = 1.0 / np.arange(1, len(refs) + 1) ** self.p.zipf_s
        return refs, w / w.sum()

    def zipf_pick(self, role: str, exclude: Collection[str] = frozenset()) -> str:
        refs, w = self.zipf_weights(role, exclude)
        return str(refs[self.rng.choice(len(refs), p=w)])

    def not_hub(self, role: str) -> set[str]:
        """The role's images not on Docker Hub: ad-hoc pulls go through the regional mirror,
        which proxies Docker Hub, so its log shows docker.io pulls only."""
        return {r for r in self.pool[role] if not r.startswith("docker.io/")}

    def office_time(self, day: datetime, offset: int) -> datetime:
        hour = int(self.rng.choice(24, p=_OFFICE / _OFFICE.sum()))
        return day + timedelta(hours=hour - offset, minutes=float(self.rng.uniform(0, 60)))

    def weekday_between(self, lo: datetime, hi: datetime) -> datetime:
        for _ in range(50):
            day = lo + DAY * int(self.rng.integers(0, max(1, (hi - lo).days)))
            day = day.replace(hour=0, minute=0, second=0, microsecond=0)
            if day.weekday() < 5:
                return day
        return lo

    def pipeline(self, region: str, n: int, since: datetime) -> Pipeline:
        p, rng = self.p, self.rng
        system = str(rng.choice(_SYSTEMS, p=[0.4, 0.35, 0.25]))
        u = rng.random()
        kind = (
            "nightly"
            if u < p.share_nightly
            else "release"
            if u < p.share_nightly + p.share_release
            else "commit"
        )
        if kind == "release" and rng.random() < 0.5:
            system = "kubelet"
        rate = p.runs_per_office_hour * float(rng.lognormal(0, p.activity_sigma))
        uses: list[Use] = []

        def add(role: str, pick_role: str) -> None:
            ref = self.zipf_pick(pick_role, {x.ref for x in uses})
            uses.append(Use(ref, role, since, named=bool(rng.random() < p.static_coverage)))

        if system == "kubelet":
            for _ in range(int(rng.integers(1, 4))):
                add("deploy", "deploy")
            add("service", "service")
        else:
            add("job", "lang")
            add("base", "base" if rng.random() < 0.6 else "lang")
            for _ in range(int(rng.integers(0, 3))):
                add("service", "service")
            for _ in range(int(rng.integers(0, 3))):
                add("tool", "tool")
        name = (
            f"{region}/team-{n % 12:02d}/{['api', 'web', 'etl', 'infra', 'ml', 'app'][n % 6]}-{n}"
        )
        return Pipeline(name, region, system, kind, rate, int(rng.integers(0, 5)), uses, since)

    def make_pipelines(self) -> list[Pipeline]:
        p, rng = self.p, self.rng
        out: list[Pipeline] = []
        for region in p.regions:
            for n in range(p.pipelines_per_region):
                out.append(self.pipeline(region, n, p.start - timedelta(days=60)))
            extra = int(rng.poisson(p.new_pipelines_per_week * p.weeks))
            for k in range(extra):
                t = self.office_time(self.weekday_between(p.start + 7 * DAY, self.end), 0)
                pl = self.pipeline(region, p.pipelines_per_region + k, t)
                start = t + timedelta(hours=float(rng.exponential(p.adoption_delay_hours)))
                pl.since = start
                for use in pl.uses:
                    use.since = start
                    self.adopted.add((region, use.ref))
                pl.kind = "commit"
                out.append(pl)
        return out

    def adopt_and_migrate(self, pipelines: list[Pipeline]) -> None:
        p, rng = self.p, self.rng
        for region in p.regions:
            mine = [pl for pl in pipelines if pl.region == region and pl.system != "kubelet"]
            for _ in range(int(rng.poisson(p.adoptions_per_week * p.weeks))):
                pl = mine[int(rng.integers(len(mine)))]
                t = self.office_time(self.weekday_between(p.start + 7 * DAY, self.end), 0)
                role = str(rng.choice(["service", "tool"]))
                # An image new to the region when there is one left (a new tool or service).
                used = {u.ref for q in pipelines if q.region == region for u in q.uses}
                fresh = [r for r in self.held[role] if r not in used]
                ref = fresh[int(rng.integers(len(fresh)))] if fresh else self.zipf_pick(role)
                start = t + timedelta(hours=float(rng.exponential(p.adoption_delay_hours)))
                pl.uses.append(Use(ref, role, start, named=True))
                self.adopted.add((region, ref))
        for old, new in self.newer.items():
            begin = p.start + DAY * int(rng.integers(7, max(8, 7 * p.weeks - 21)))
            for pl in pipelines:
                for use in list(pl.uses):
                    if use.ref != old or use.until is not None or rng.random() > p.migration_share:
                        continue
                    t = self.office_time(
                        self.weekday_between(begin, begin + p.migration_spread_days * DAY), 0
                    )
                    if t >= self.end:
                        continue
                    use.until = t
                    pl.uses.append(Use(new, use.role, t, named=use.named))

    def runs(self, pl: Pipeline, offset: int) -> list[datetime]:
        """Start times of the pipeline's runs over the history."""
        p, rng = self.p, self.rng
        out: list[datetime] = []
        day = p.start
        while day < self.end:
            weekday = day.weekday() < 5
            if pl.kind == "nightly":
                out.append(
                    day
                    + timedelta(hours=(pl.hour - offset) % 24, minutes=float(rng.uniform(0, 30)))
                )
            elif pl.kind == "release":
                if day.weekday() == p.release_weekday:
                    lo, hi = p.release_runs
                    for _ in range(int(rng.integers(lo, hi))):
                        out.append(day + timedelta(hours=14 - offset + float(rng.uniform(0, 3))))
            else:
                scale = 1.0 if weekday else p.weekend_factor
                counts = rng.poisson(pl.rate * scale * _OFFICE)
                for hour, c in enumerate(counts):
                    for _ in range(int(c)):
                        out.append(
                            day + timedelta(hours=hour - offset, minutes=float(rng.uniform(0, 60)))
                        )
            day += DAY
        return out


def generate(params: Params | None = None) -> Workload:
    """The whole ground truth: pipelines, every pull, static references, day labels."""
    p = params or Params()
    g = _Gen(p)
    rng = g.rng
    pipelines = g.make_pipelines()
    g.adopt_and_migrate(pipelines)
    offsets = dict(zip(p.regions, p.utc_offset, strict=True))
    rows: list[tuple[object, ...]] = []
    labels: dict[tuple[str, pd.Timestamp], set[str]] = {}

    def label(region: str, t: datetime, kind: str) -> None:
        labels.setdefault((region, pd.Timestamp(t.date())), set()).add(kind)

    def pull(t: datetime, pl_name: str, region: str, run: int, use: Use, source: str) -> None:
        version = g.catalogue.version_at(use.ref, t)
        assert version is not None
        name, tag = use.ref.rsplit(":", 1)
        present = rng.random() < p.present_probability.get(source, 0.0)
        rows.append((t, region, pl_name, run, name, tag, version.digest, source, not present))

    run_id = 0
    bursts = {r: int(rng.poisson(p.bursts_per_week * p.weeks)) for r in p.regions}
    for pl in pipelines:
        off = offsets[pl.region]
        times = [t for t in g.runs(pl, off) if pl.since <= t < g.end]
        mine = [q for q in pipelines if q.region == pl.region]
        if bursts[pl.region] and rng.random() < bursts[pl.region] / max(1, len(mine)):
            t0 = g.office_time(g.weekday_between(p.start, g.end), off)
            times += [
                t0 + timedelta(minutes=float(rng.uniform(0, 90)))
                for _ in range(int(rng.integers(10, 30)))
            ]
        for t in sorted(times):
            run_id += 1
            for use in pl.uses:
                if use.since <= t and (use.until is None or t < use.until):
                    src = (
                        pl.system
                        if use.role != "base"
                        else _SOURCE_FOR_BASE.get(pl.system, pl.system)
                    )
                    pull(t, pl.name, pl.region, run_id, use, src)
    for region in p.regions:  # ad-hoc pulls seen only by the mirror's access log
        day = p.start
        while day < g.end:
            scale = 1.0 if day.weekday() < 5 else p.weekend_factor
            for hour, c in enumerate(
                rng.poisson(p.adhoc_per_office_hour * scale * _OFFICE / _OFFICE.max())
            ):
                for _ in range(int(c)):
                    run_id += 1
                    role = str(rng.choice(ADHOC_ROLES))
                    t = day + timedelta(
                        hours=hour - offsets[region], minutes=float(rng.uniform(0, 60))
                    )
                    ref = g.zipf_pick(role, g.not_hub(role))
                    pull(t, "", region, run_id, Use(ref, "adhoc", t), "distribution")
            day += DAY
    pulls = pd.DataFrame(
        rows,
        columns=[
            "timestamp",
            "region",
            "pipeline",
            "run",
            "image",
            "tag",
            "digest",
            "source",
            "pulled",
        ],
    )
    pulls["timestamp"] = pd.to_datetime(pulls["timestamp"], utc=True)
    pulls = pulls[(pulls["timestamp"] >= p.start) & (pulls["timestamp"] < g.end)]
    pulls = pulls.sort_values("timestamp", kind="stable").reset_index(drop=True)

    # Day labels from the ground truth.
    first = pulls.groupby(["region", "image", "tag"])["timestamp"].min()
    newer = set(g.newer.values())
    for (region, image, tag), t in first.items():
        ref = f"{image}:{tag}"
        if ref in newer:
            label(str(region), t.to_pydatetime(), "migration")
        elif (region, ref) in g.adopted and t >= p.start + DAY:
            label(str(region), t.to_pydatetime(), "adoption")
    day = p.start
    while day < g.end:
        for region in p.regions:
            wd = day.weekday()
            label(region, day, "weekday" if wd < 5 else "weekend")
            if wd == 0:
                label(region, day, "after_weekend")
            if wd == p.release_weekday:
                label(region, day, "release")
            if wd == p.move_weekday:
                label(region, day, "tag_move")
        day += DAY
    # Each tag's share of the ad-hoc pulls (a role drawn uniformly, then Zipf within it).
    adhoc_share: dict[str, float] = {}
    for role in ADHOC_ROLES:
        refs, weights = g.zipf_weights(role, g.not_hub(role))
        for ref, w in zip(refs, weights, strict=True):
            adhoc_share[ref] = adhoc_share.get(ref, 0.0) + float(w) / len(ADHOC_ROLES)
    return Workload(p, g.catalogue, pipelines, pulls, static_refs(pipelines), labels, adhoc_share)


_FILES = {"base": "Dockerfile", "service": "docker-compose.yml", "deploy": "k8s/deployment.yaml"}


def _file_for(pl: Pipeline, role: str) -> str:
    if role in _FILES:
        return f"{pl.name}/{_FILES[role]}"
    if pl.system == "gitlab":
        return f"{pl.name}/.gitlab-ci.yml"
    return f"{pl.name}/.github/workflows/ci.yml"


def static_refs(pipelines: list[Pipeline]) -> pd.DataFrame:
    """One row per image named in a repository file, with when it was named and removed."""
    rows = []
    for pl in pipelines:
        lines: dict[str, int] = {}
        for use in pl.uses:
            if not use.named:
                continue
            f = _file_for(pl, use.role)
            lines[f] = lines.get(f, 0) + 1
            name, tag = use.ref.rsplit(":", 1)
            rows.append((f, lines[f], use.ref, name, tag, use.since, use.until))
    df = pd.DataFrame(
        rows, columns=["file", "line", "reference", "image", "tag", "first_seen", "removed"]
    )
    df["first_seen"] = pd.to_datetime(df["first_seen"], utc=True)
    df["removed"] = pd.to_datetime(df["removed"], utc=True)
    return df
