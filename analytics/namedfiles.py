"""What the files naming an image say about its demand ahead: a pipeline whose file stops
naming an image stops pulling it, from the commit on.

``warmer refs`` dates each reference by its git history (``first_seen``; ``removed``: the
commit that took it out of the file). Pulls are made by the pipelines those files define,
so each of a key's past days is counted as it would have been with only the files naming
it now: scaled by files now over files then, where fewer name it now. The days after the
removal are counted whole, so where the pulls go on (pipelines the scanned files do not
define) the estimate follows them back within its half-life. Files newly naming a key
raise nothing here: scaling days up as well was worse in the backtest (tuned and held-out
seeds), and a new tag's adoption is the static prior's and the migration split's
(``analytics.rank``).

Pure: functions of the static references (``analytics.frames.normalise_static``) and the
keys of the usage features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analytics.estimates import DAY

MIDDAY = pd.Timedelta(hours=12)  # a past day's files are counted at its middle


def named_counts(
    static: pd.DataFrame, keys: list[tuple[str, str]], times: list[pd.Timestamp]
) -> np.ndarray:
    """``out[k, j]``: the files naming key ``k`` (image, tag) at ``times[j]``. A file
    naming a key on several lines counts once, from its first such line until the last one
    was removed."""
    out = np.zeros((len(keys), len(times)))
    st = static[static["tag"] != ""] if not static.empty else static
    if st.empty or not keys:
        return out
    spans = (
        st.assign(removed=st["removed"].fillna(pd.Timestamp.max))
        .groupby(["file", "image", "tag"], sort=False)
        .agg(first=("first_seen", "min"), last=("removed", "max"))
        .reset_index()
    )
    index = {key: i for i, key in enumerate(keys)}
    pairs = zip(spans["image"].astype(str), spans["tag"].astype(str), strict=True)
    rows = np.array([index.get(key, -1) for key in pairs], dtype=np.int64)
    keep = rows >= 0
    if not keep.any():
        return out
    at = np.array(times, dtype="datetime64[ns]")
    first = spans["first"].to_numpy(dtype="datetime64[ns]")[keep]
    last = spans["last"].to_numpy(dtype="datetime64[ns]")[keep]
    live = (first[:, None] < at[None, :]) & (last[:, None] > at[None, :])
    np.add.at(out, rows[keep], live.astype(np.float64))
    return out


@dataclass(frozen=True)
class Named:
    """Per key: ``scale[k, a]`` for its pulls ``a`` days before the target (1 where as many
    files name it now as then, or none did then), and ``before`` the most files that named
    it on a scaled day (0: none scaled)."""

    scale: np.ndarray
    before: np.ndarray


def named_scale(
    info: pd.DataFrame,
    static: pd.DataFrame,
    days: int,
    target: pd.Timestamp,
    now: pd.Timestamp,
) -> Named:
    """How the files naming each key of ``info`` (region, image, tag, pin) now scale its
    past ``days`` days (``daily[k, a]``: ``a`` days before ``target``; column 0 unused).
    A key pinned by digest is named by no file: 1."""
    n = len(info)
    if days < 1:
        return Named(np.ones((n, 0)), np.zeros(n))
    keys = list(zip(info["image"].astype(str), info["tag"].astype(str), strict=True))
    times = [now] + [target - a * DAY + MIDDAY for a in range(1, days)]
    counts = named_counts(static, keys, times)
    scale = np.ones((n, days))
    fewer = (counts[:, :1] < counts) & (info["pin"].to_numpy() == "")[:, None]
    fewer[:, 0] = False
    np.divide(counts[:, :1], counts, out=scale, where=fewer)
    before = np.where(fewer, counts, 0.0).max(axis=1)
    return Named(scale, before)
