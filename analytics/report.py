"""Frames the analysis notebooks plot: loaders over the database, and pure reshapes.

The notebooks (``notebooks/*.ipynb``) read the database only through these functions, so
what they show is what the project stores. Loaders take a database URL (and, where needed,
a catalogue or config path) and return DataFrames; everything else here is a pure function
from frames to frames, tested on its own.

Times are UTC. Usage hours are UTC hours, as the store keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analytics import store
from analytics.frames import normalise_static
from analytics.namedfiles import named_counts

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class MissingDatabase(FileNotFoundError):
    """The SQLite file a URL names does not exist (opening it would create an empty one)."""


# -- loaders (I/O) ----------------------------------------------------------------------


def require_database(url: str) -> str:
    """``url`` itself; raises :class:`MissingDatabase` for a SQLite file that is not there."""
    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:" and not Path(path).is_file():
            raise MissingDatabase(
                f"{path}: no database there; run `warmer demo` or point WARMER_DB at one"
            )
    return url


def load_usage(url: str, region: str | None = None) -> pd.DataFrame:
    """The store's hourly usage rows (``analytics.store.usage_frame``)."""
    return store.usage_frame(require_database(url), region=region)


def load_static(url: str) -> pd.DataFrame:
    """Stored static references (``analytics.store.static_frame``)."""
    return store.static_frame(require_database(url))


def load_rankings(url: str, regions: Iterable[str]) -> pd.DataFrame:
    """Each region's latest stored ranking (``warmer rank``), best first per region."""
    from warmer.store.rankings import COLUMNS, latest_ranking

    frames = [latest_ranking(require_database(url), r) for r in regions]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "computed_at"])
    return pd.concat(frames, ignore_index=True)


def load_backtest(
    url: str,
    catalogue: Path | None,
    budgets: Sequence[int],
    regions: Iterable[str] | None = None,
    warmup_days: int = 7,
) -> pd.DataFrame:
    """Hit rates per (region, budget, strategy) over all backtest days, as ``warmer backtest``.

    Image sizes come from ``catalogue`` (``catalogue.json`` of ``warmer generate``) when it
    exists, with the ``labels.json`` beside it; otherwise every image has the default size.
    Columns: region, budget, strategy, days, pull_hit_rate, byte_hit_rate.
    """
    from analytics.backtest import backtest, summarise
    from analytics.generate.catalogue import Catalogue
    from analytics.generate.write import load_labels

    layers = labels = None
    if catalogue is not None and Path(catalogue).is_file():
        layers = Catalogue.load(Path(catalogue))
        beside = Path(catalogue).parent / "labels.json"
        labels = load_labels(beside) if beside.is_file() else None
    usage = load_usage(url)
    static = load_static(url)
    names = sorted(usage["region"].unique()) if regions is None else list(regions)
    rows = []
    for region in names:
        for budget in budgets:
            days = backtest(usage, static, region, budget, layers, warmup_days, labels)
            if days.empty:
                continue
            summary = summarise(days)
            summary = summary[summary["kind"] == "all"].drop(columns="kind")
            rows.append(summary.assign(region=region, budget=int(budget)))
    columns = ["region", "budget", "strategy", "days", "pull_hit_rate", "byte_hit_rate"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.concat(rows, ignore_index=True)[columns]


def load_ensemble_weights(
    url: str, regions: Iterable[str] | None = None, warmup_days: int = 7
) -> pd.DataFrame:
    """The ensemble's weights per region as of each day after the warm-up, as the
    production ranking (``analytics.ensemble``) would have set them that morning from the
    region's record. Columns: region, day, predictor, weight."""
    from analytics.ensemble import weights_over_time

    usage = load_usage(url)
    static = load_static(url)
    names = sorted(usage["region"].unique()) if regions is None else list(regions)
    frames = []
    for region in names:
        mine = usage[usage["region"] == region]
        if mine.empty:
            continue
        first = pd.Timestamp(mine["day"].min()).tz_localize(None).normalize()
        last = pd.Timestamp(mine["day"].max()).tz_localize(None).normalize()
        days = list(pd.date_range(first + pd.Timedelta(days=warmup_days), last, freq="D"))
        frames.append(weights_over_time(mine, static, region, days).assign(region=region))
    columns = ["region", "day", "predictor", "weight"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def load_runs(url: str, limit: int = 1000) -> pd.DataFrame:
    """Warm runs, oldest first, with their stored summary figures."""
    from warmer.store.ledger import Ledger, as_utc

    rows = []
    for run in Ledger(require_database(url)).recent_runs(limit=limit):
        summary = json.loads(run.summary or "{}")
        rows.append(
            {
                "run": run.id,
                "region": run.region,
                "state": run.state,
                "started_at": as_utc(run.started_at),
                "finished_at": as_utc(run.finished_at),
                "done": int(summary.get("done", 0)),
                "failed": int(summary.get("failed", 0)),
                "skipped": int(summary.get("skipped", 0)),
                "incidents": int(summary.get("incidents", 0)),
                "bytes": int(sum(summary.get("bytes_by_mirror", {}).values())),
                "seconds": float(summary.get("seconds", 0.0)),
            }
        )
    columns = ["run", "region", "state", "started_at", "finished_at", "done", "failed"]
    columns += ["skipped", "incidents", "bytes", "seconds"]
    frame = pd.DataFrame(rows, columns=columns)
    for col in ("started_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame.sort_values("run", ignore_index=True)


ITEM_COLUMNS = ["run", "seq", "mirror", "tier", "image", "kind", "digest", "size", "state"]
ITEM_COLUMNS += ["bytes", "parent_cost", "started_at", "finished_at"]


def load_items(url: str, runs: Iterable[int]) -> pd.DataFrame:
    """Every item of the given runs: state, bytes, parent-link cost, start and finish."""
    from warmer.store.ledger import Ledger

    ledger = Ledger(require_database(url))
    fields = ["run_id", *ITEM_COLUMNS[1:]]
    rows = [tuple(getattr(i, f) for f in fields) for run in runs for i in ledger.items(int(run))]
    frame = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    for col in ("started_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def load_incidents(url: str) -> pd.DataFrame:
    """Incidents, oldest first: when, run, mirror, repository, digest, kind, detail."""
    from warmer.store.ledger import Ledger

    cols = ["at", "run", "mirror", "repository", "digest", "kind", "detail"]
    rows = [
        (i.at, i.run_id, i.mirror, i.repository, i.digest, i.kind, i.detail)
        for i in Ledger(require_database(url)).incidents()
    ]
    frame = pd.DataFrame(rows, columns=cols)
    frame["at"] = pd.to_datetime(frame["at"], utc=True)
    return frame.sort_values("at", ignore_index=True)


def load_holdings(url: str) -> pd.DataFrame:
    """Per mirror and state: items and bytes the ledger says it holds."""
    from warmer.store.ledger import Ledger

    rows = Ledger(require_database(url)).holdings_summary()
    return pd.DataFrame(rows, columns=["mirror", "state", "items", "bytes"])


DRIFT_COLUMNS = ["at", "reference", "image", "tag", "upstream", "old_digest", "new_digest"]
DRIFT_COLUMNS += ["moved_after", "stale_tiers", "stale_seconds"]


def load_drift(url: str) -> pd.DataFrame:
    """Drift events (``warmer refresh``), oldest first; empty when none are recorded.

    ``at`` is when the move was detected, ``stale_tiers`` the tiers found serving the old
    digest (a list of dicts) and ``stale_seconds`` the longest any of them stayed stale.
    """
    from warmer.store.ledger import Ledger, as_utc

    rows = []
    for d in Ledger(require_database(url)).drifts():
        tiers = json.loads(d.stale_tiers or "[]")
        seconds = [float(t.get("seconds") or 0) for t in tiers if isinstance(t, dict)]
        values = {
            "at": as_utc(d.detected_at),
            "reference": f"{d.image}:{d.tag}",
            "moved_after": as_utc(d.moved_after),
            "stale_tiers": tiers,
            "stale_seconds": max(seconds, default=0.0),
        }
        rows.append([values.get(c, getattr(d, c, None)) for c in DRIFT_COLUMNS])
    frame = pd.DataFrame(rows, columns=DRIFT_COLUMNS)
    for col in ("at", "moved_after"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    frame["stale_seconds"] = frame["stale_seconds"].astype(float)
    return frame.sort_values("at", ignore_index=True)


def load_link_caps(config: Path | None) -> dict[str, float]:
    """Each mirror's parent-link cap in bytes/s from a config file; {} when there is none."""
    if config is None or not Path(config).is_file():
        return {}
    from warmer.config import load

    cfg = load(config)
    return {name: float(m.link.bandwidth) for name, m in cfg.mirrors.items() if m.link.bandwidth}


# -- pure reshapes ----------------------------------------------------------------------


def pulls_by_region(usage: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Pulls per period (rows) and region (columns); periods without pulls are 0."""
    if usage.empty:
        return pd.DataFrame()
    at = usage["day"] + pd.to_timedelta(usage["hour"], unit="h")
    frame = usage.assign(at=at.dt.floor(freq) if freq != "D" else usage["day"])
    out = frame.pivot_table(index="at", columns="region", values="pulls", aggfunc="sum")
    full = pd.date_range(out.index.min(), out.index.max(), freq=freq)
    return out.reindex(full, fill_value=0).fillna(0).astype("int64").rename_axis("at")


def top_images(usage: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """The ``n`` most pulled image tags: reference, pulls, uses already present, regions."""
    cols = ["reference", "pulls", "present", "regions"]
    if usage.empty:
        return pd.DataFrame(columns=cols)
    ref = usage["image"] + ":" + usage["tag"].where(usage["tag"] != "", usage["digest"])
    g = usage.assign(reference=ref).groupby("reference")
    out = g.agg(pulls=("pulls", "sum"), present=("present", "sum"))
    out["regions"] = g["region"].agg(lambda s: ",".join(sorted(set(s))))
    out = out.sort_values(["pulls", "present"], ascending=False).head(n).reset_index()
    return out[cols]


def hour_weekday(usage: pd.DataFrame) -> pd.DataFrame:
    """Pulls by weekday (rows Mon..Sun) and UTC hour (columns 0..23)."""
    weekday = usage["day"].dt.dayofweek
    grid = usage.assign(weekday=weekday).pivot_table(
        index="weekday", columns="hour", values="pulls", aggfunc="sum"
    )
    grid = grid.reindex(index=range(7), columns=range(24), fill_value=0).fillna(0)
    grid.index = pd.Index(WEEKDAYS, name="weekday")
    return grid.astype("int64")


def static_vs_observed(usage: pd.DataFrame, static: pd.DataFrame) -> pd.DataFrame:
    """Per image tag: files naming it now, pulls seen, and which of the two it has.

    ``status`` is ``named and pulled``, ``named, never pulled`` or ``pulled, not named``.
    A reference the git history shows removed (``removed`` set) no longer names it.
    """
    if "removed" in static.columns:
        static = static[static["removed"].isna()]
    files = (
        static.groupby(["image", "tag"])["file"].nunique().rename("files")
        if not static.empty
        else pd.Series(dtype="int64", name="files")
    )
    pulls = (
        usage.groupby(["image", "tag"])["pulls"].sum()
        if not usage.empty
        else pd.Series(dtype="int64", name="pulls")
    )
    out = pd.concat([files, pulls], axis=1).fillna(0).astype("int64")
    out.index = out.index.set_names(["image", "tag"])
    named, pulled = out["files"] > 0, out["pulls"] > 0
    out["status"] = np.select(
        [named & pulled, named], ["named and pulled", "named, never pulled"], "pulled, not named"
    )
    return out.reset_index().sort_values(["pulls", "files"], ascending=False, ignore_index=True)


def tier_bytes_over_time(items: pd.DataFrame) -> pd.DataFrame:
    """Cumulative bytes warmed per tier (columns) at each finish time (rows), done items."""
    done = items[(items["state"] == "done") & items["finished_at"].notna()]
    if done.empty:
        return pd.DataFrame()
    steps = done.pivot_table(index="finished_at", columns="tier", values="bytes", aggfunc="sum")
    return steps.fillna(0).cumsum().rename(columns=lambda t: f"tier {t}")


def link_rate(items: pd.DataFrame, bins: int = 100, min_width: float = 0.05) -> pd.DataFrame:
    """Parent-link use per (run, mirror) over the run: bytes/s in ``bins`` equal slices.

    Each done item's ``parent_cost`` (the bytes its fetch costs on the mirror's parent link)
    is spread evenly over its [started_at, finished_at]; ``t`` is seconds since the run's
    first start (the slice's start). Hand-written: spreading intervals over bins is one
    clipped overlap matrix, not worth a dependency.
    """
    cols = ["run", "mirror", "t", "rate"]
    done = items[
        (items["state"] == "done") & items["started_at"].notna() & items["finished_at"].notna()
    ]
    parts = []
    for run, sel in done.groupby("run"):
        origin = sel["started_at"].min()
        start = (sel["started_at"] - origin).dt.total_seconds().to_numpy()
        end = (sel["finished_at"] - origin).dt.total_seconds().to_numpy()
        end = np.maximum(end, start + 1e-6)  # a zero-length item still moved its bytes
        width = max(float(end.max()) / bins, min_width)
        edges = np.arange(0.0, float(end.max()) + width, width)
        lo, hi = edges[:-1], edges[1:]
        overlap = np.clip(np.minimum(end[:, None], hi) - np.maximum(start[:, None], lo), 0, None)
        share = overlap / (end - start)[:, None]
        cost = sel["parent_cost"].to_numpy(dtype=float)[:, None] * share
        for mirror in sorted(sel["mirror"].unique()):
            mask = (sel["mirror"] == mirror).to_numpy()
            rate = cost[mask].sum(axis=0) / width
            parts.append(pd.DataFrame({"run": run, "mirror": mirror, "t": lo, "rate": rate}))
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def run_tiers(items: pd.DataFrame) -> pd.DataFrame:
    """Per run and tier: items done, failed and skipped, and bytes warmed."""
    if items.empty:
        return pd.DataFrame(columns=["run", "tier", "done", "failed", "skipped", "bytes"])
    counts = pd.crosstab([items["run"], items["tier"]], items["state"])
    counts = counts.reindex(columns=["done", "failed", "skipped"], fill_value=0)
    moved = items.groupby(["run", "tier"])["bytes"].sum().rename("bytes")
    return counts.join(moved).reset_index()


def files_stopped_naming(usage: pd.DataFrame, static: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Daily pulls and files naming it, for the ``n`` pulled image tags whose files fell
    most (as a share of the most that named them while pulled): the signal
    ``analytics.namedfiles`` scales their past pulls by. Columns: reference, day, pulls,
    files (files naming it at the middle of that day). Empty when no file stopped naming a
    pulled image tag (references without git dates never do)."""
    cols = ["reference", "day", "pulls", "files"]
    if usage.empty or static.empty or "removed" not in static.columns:
        return pd.DataFrame(columns=cols)
    tagged = usage[usage["tag"] != ""]
    daily = tagged.groupby(["image", "tag", "day"])["pulls"].sum()
    keys = sorted({(str(i), str(t)) for i, t, _ in daily.index})
    days = pd.date_range(tagged["day"].min(), tagged["day"].max(), freq="D")
    counts = named_counts(normalise_static(static), keys, list(days + pd.Timedelta(hours=12)))
    most = counts.max(axis=1)
    drop = np.divide(most - counts[:, -1], most, out=np.zeros(len(keys)), where=most > 0)
    chosen = [k for k in np.argsort(-drop, kind="stable")[:n] if drop[k] > 0]
    frames = []
    for k in chosen:
        image, tag = keys[k]
        pulls = daily.loc[(image, tag)].reindex(days, fill_value=0).to_numpy()
        frames.append(
            pd.DataFrame(
                {"reference": f"{image}:{tag}", "day": days, "pulls": pulls, "files": counts[k]}
            )
        )
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
