"""Maintenance windows on values: ``now`` passed in, DST transitions, overlap, bad specs, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmer.cli.main import cli
from warmer.windows import (
    MAX_SPAN,
    InvalidWindow,
    Window,
    WindowSpec,
    current_window,
    next_windows,
    remaining,
)


def utc(text: str) -> datetime:
    """``"2024-03-31 01:30"`` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def spec(cron: str, duration: str, tz: str = "UTC") -> WindowSpec:
    return WindowSpec.from_mapping({"cron": cron, "duration": duration, "timezone": tz})


def starts(windows: list[Window]) -> list[str]:
    return [w.start.strftime("%Y-%m-%d %H:%M") for w in windows]


def local_starts(windows: list[Window]) -> list[str]:
    return [w.local_start.strftime("%a %Y-%m-%d %H:%M %Z") for w in windows]


# Europe/Berlin: CET +01 in winter, CEST +02 in summer; 2024 changes on Sun 31 Mar (02:00 ->
# 03:00) and Sun 27 Oct (03:00 -> 02:00). America/New_York: EST -05 / EDT -04; 2024 changes on
# Sun 10 Mar (02:00 -> 03:00) and Sun 3 Nov (02:00 -> 01:00).
NEXT_CASES = [
    pytest.param(
        "0 1 * * 1-5", "3h", "Europe/Berlin", "2024-02-27 12:00", 3,
        ["Wed 2024-02-28 01:00 CET", "Thu 2024-02-29 01:00 CET", "Fri 2024-03-01 01:00 CET"],
        id="weekdays-berlin",
    ),
    pytest.param(
        "0 1 * * 1-5", "3h", "Europe/Berlin", "2024-02-29 12:00", 3,
        ["Fri 2024-03-01 01:00 CET", "Mon 2024-03-04 01:00 CET", "Tue 2024-03-05 01:00 CET"],
        id="across-weekend",
    ),
    pytest.param(
        "0 1 * * mon-fri", "3h", "Europe/Berlin", "2024-03-01 12:00", 1,
        ["Mon 2024-03-04 01:00 CET"],
        id="weekday-names",
    ),
    pytest.param(
        "0 3 * * 0", "1h", "UTC", "2024-03-01 00:00", 2,
        ["Sun 2024-03-03 03:00 UTC", "Sun 2024-03-10 03:00 UTC"],
        id="zero-is-sunday",
    ),
    pytest.param(
        "0 3 * * 7", "1h", "UTC", "2024-03-01 00:00", 1, ["Sun 2024-03-03 03:00 UTC"],
        id="seven-is-sunday",
    ),
    pytest.param(
        "0 3 * * 5-7", "1h", "UTC", "2024-03-01 04:00", 3,
        ["Sat 2024-03-02 03:00 UTC", "Sun 2024-03-03 03:00 UTC", "Fri 2024-03-08 03:00 UTC"],
        id="fri-to-sun-range",
    ),
    pytest.param(
        "0 3 * * */2", "1h", "UTC", "2024-03-03 00:00", 4,
        [
            "Sun 2024-03-03 03:00 UTC", "Tue 2024-03-05 03:00 UTC",
            "Thu 2024-03-07 03:00 UTC", "Sat 2024-03-09 03:00 UTC",
        ],
        id="crontab-step-from-sunday",
    ),
    pytest.param(
        "0 22 1 * *", "2h", "UTC", "2024-01-15 00:00", 2,
        ["Thu 2024-02-01 22:00 UTC", "Fri 2024-03-01 22:00 UTC"],
        id="monthly-utc",
    ),
    # Spring forward in Berlin: 02:30 does not exist on 31 Mar; it happens at 01:30 UTC =
    # 03:30 CEST, once; the days around keep 02:30 local.
    pytest.param(
        "30 2 * * *", "3h", "Europe/Berlin", "2024-03-29 12:00", 3,
        ["Sat 2024-03-30 02:30 CET", "Sun 2024-03-31 03:30 CEST", "Mon 2024-04-01 02:30 CEST"],
        id="berlin-spring-forward-skipped-hour",
    ),
    pytest.param(
        "0 1 * * 1-5", "3h", "Europe/Berlin", "2024-03-29 12:00", 2,
        ["Mon 2024-04-01 01:00 CEST", "Tue 2024-04-02 01:00 CEST"],
        id="berlin-weekdays-after-spring-forward",
    ),
    # Fall back in Berlin: 02:30 happens twice on 27 Oct; one window, at the first.
    pytest.param(
        "30 2 * * *", "1h", "Europe/Berlin", "2024-10-26 12:00", 2,
        ["Sun 2024-10-27 02:30 CEST", "Mon 2024-10-28 02:30 CET"],
        id="berlin-fall-back-repeated-hour-once",
    ),
    pytest.param(
        "30 2 * * *", "2h", "America/New_York", "2024-03-09 12:00", 3,
        ["Sun 2024-03-10 03:30 EDT", "Mon 2024-03-11 02:30 EDT", "Tue 2024-03-12 02:30 EDT"],
        id="new-york-spring-forward",
    ),
    pytest.param(
        "30 1 * * *", "1h", "America/New_York", "2024-11-02 12:00", 2,
        ["Sun 2024-11-03 01:30 EDT", "Mon 2024-11-04 01:30 EST"],
        id="new-york-fall-back-once",
    ),
    # Hourly starts skip the repeated wall hour (each wall time fires once).
    pytest.param(
        "0 * * * *", "10m", "America/New_York", "2024-11-03 04:30", 3,
        ["Sun 2024-11-03 01:00 EDT", "Sun 2024-11-03 02:00 EST", "Sun 2024-11-03 03:00 EST"],
        id="new-york-hourly-fall-back",
    ),
    pytest.param(
        "*/30 * * * *", "10m", "Europe/Berlin", "2024-03-31 00:15", 4,
        [
            "Sun 2024-03-31 01:30 CET", "Sun 2024-03-31 03:00 CEST",
            "Sun 2024-03-31 03:30 CEST", "Sun 2024-03-31 04:00 CEST",
        ],
        id="berlin-half-hourly-spring-forward-no-duplicates",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("cron", "duration", "tz", "now", "count", "expected"), NEXT_CASES)
def test_next_windows(
    cron: str, duration: str, tz: str, now: str, count: int, expected: list[str]
) -> None:
    windows = next_windows([spec(cron, duration, tz)], utc(now), count)
    assert local_starts(windows) == expected
    for w in windows:
        assert w.start.tzinfo == UTC and w.end.tzinfo == UTC
        assert w.end - w.start == spec(cron, duration, tz).duration


@pytest.mark.parametrize(
    ("now", "expected_start"),
    [
        # Asked from before, inside the gap, and during the window: the same instant.
        ("2024-03-30 12:00", "2024-03-31 01:30"),
        ("2024-03-31 00:59", "2024-03-31 01:30"),
        ("2024-03-31 01:15", "2024-03-31 01:30"),
        ("2024-03-31 02:00", "2024-03-31 01:30"),
        ("2024-03-31 04:29", "2024-03-31 01:30"),
        ("2024-03-31 04:30", "2024-04-01 00:30"),
    ],
)
def test_spring_forward_start_is_stable_whatever_now(now: str, expected_start: str) -> None:
    (window,) = next_windows([spec("30 2 * * *", "3h", "Europe/Berlin")], utc(now), 1)
    assert starts([window]) == [expected_start]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2024-10-27 00:45", ["2024-10-27 00:30", "2024-10-28 01:30"]),
        # During the second 02:30 CET (01:30 UTC) nothing new opens.
        ("2024-10-27 01:20", ["2024-10-27 00:30", "2024-10-28 01:30"]),
        ("2024-10-27 01:35", ["2024-10-28 01:30", "2024-10-29 01:30"]),
    ],
)
def test_fall_back_fires_once_whatever_now(now: str, expected: list[str]) -> None:
    windows = next_windows([spec("30 2 * * *", "1h", "Europe/Berlin")], utc(now), 2)
    assert starts(windows) == expected


@pytest.mark.parametrize(
    ("cron", "tz", "start", "end_local", "wall_hours"),
    [
        # 3 real hours across fall back: the wall clock shows 2 h.
        ("30 0 * * *", "America/New_York", "2024-11-03 04:30", "02:30 EST", 2),
        # 3 real hours across spring forward: the wall clock shows 4 h.
        ("30 0 * * *", "America/New_York", "2024-03-10 05:30", "04:30 EDT", 4),
        ("0 1 * * *", "Europe/Berlin", "2024-10-26 23:00", "03:00 CET", 2),
        ("0 1 * * *", "Europe/Berlin", "2024-03-31 00:00", "05:00 CEST", 4),
    ],
)
def test_duration_is_absolute_across_dst(
    cron: str, tz: str, start: str, end_local: str, wall_hours: int
) -> None:
    (window,) = next_windows([spec(cron, "3h", tz)], utc(start) - timedelta(minutes=1), 1)
    assert window.start == utc(start)
    assert window.end - window.start == timedelta(hours=3)
    assert window.local_end.strftime("%H:%M %Z") == end_local
    wall = window.local_end.replace(tzinfo=None) - window.local_start.replace(tzinfo=None)
    assert wall == timedelta(hours=wall_hours)


def test_late_start_gets_what_is_left() -> None:
    specs = [spec("0 1 * * 1-5", "3h", "Europe/Berlin")]
    now = utc("2024-03-04 00:30")  # Mon 01:30 CET, half an hour into the window
    window = current_window(specs, now)
    assert window is not None
    assert (window.start, window.end) == (utc("2024-03-04 00:00"), utc("2024-03-04 03:00"))
    assert remaining(window, now) == timedelta(hours=2, minutes=30)
    assert next_windows(specs, now, 2)[0] == window
    assert starts(next_windows(specs, now, 2))[1] == "2024-03-05 00:00"


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        ("2024-03-03 23:59", False),
        ("2024-03-04 00:00", True),  # start is inclusive
        ("2024-03-04 02:59", True),
        ("2024-03-03 23:59:59.500000", False),  # half a second before the start
        ("2024-03-04 03:00", False),  # end is exclusive
        ("2024-03-09 00:30", False),  # Saturday
    ],
)
def test_current_window_bounds(now: str, inside: bool) -> None:
    window = current_window([spec("0 1 * * 1-5", "3h", "Europe/Berlin")], utc(now))
    assert (window is not None) is inside


def test_remaining_before_during_after() -> None:
    w = Window(utc("2024-01-01 01:00"), utc("2024-01-01 04:00"), spec("0 1 * * *", "3h"))
    assert remaining(w, utc("2024-01-01 00:00")) == timedelta(hours=3)
    assert remaining(w, utc("2024-01-01 03:15")) == timedelta(minutes=45)
    assert remaining(w, utc("2024-01-01 05:00")) == timedelta(0)


def test_window_across_midnight_utc() -> None:
    specs = [spec("0 22 * * *", "4h")]
    window = current_window(specs, utc("2024-01-02 01:00"))
    assert window is not None
    assert (window.start, window.end) == (utc("2024-01-01 22:00"), utc("2024-01-02 02:00"))


# -- overlap: merged into the union -------------------------------------------------------

OVERLAP_CASES = [
    pytest.param(
        [("0 1 * * *", "3h"), ("0 3 * * *", "2h")], "2024-01-01 00:00",
        [("2024-01-01 01:00", "2024-01-01 05:00", "0 1 * * *")], id="two-specs-overlap",
    ),
    pytest.param(
        [("0 3 * * *", "2h"), ("0 1 * * *", "1h")], "2024-01-01 00:00",
        [("2024-01-01 01:00", "2024-01-01 02:00", "0 1 * * *"),
         ("2024-01-01 03:00", "2024-01-01 05:00", "0 3 * * *")], id="disjoint-stay-apart",
    ),
    pytest.param(
        [("0 1 * * *", "1h"), ("0 2 * * *", "1h")], "2024-01-01 00:00",
        [("2024-01-01 01:00", "2024-01-01 03:00", "0 1 * * *"),
         ("2024-01-02 01:00", "2024-01-02 03:00", "0 1 * * *")], id="touching-merge",
    ),
    pytest.param(
        [("0 1,2 * * *", "2h")], "2024-01-01 00:00",
        [("2024-01-01 01:00", "2024-01-01 04:00", "0 1,2 * * *")],
        id="one-spec-longer-than-interval",
    ),
    pytest.param(
        [("0 1 * * *", "1h"), ("30 1 * * *", "10m")], "2024-01-01 00:00",
        [("2024-01-01 01:00", "2024-01-01 02:00", "0 1 * * *")], id="contained",
    ),
    # Asked while only the later window covers now: the merged window still starts at 01:00.
    pytest.param(
        [("0 1 * * *", "3h"), ("0 3 * * *", "2h")], "2024-01-01 04:30",
        [("2024-01-01 01:00", "2024-01-01 05:00", "0 1 * * *")], id="walk-back-to-union-start",
    ),
    pytest.param(
        [("0 1 * * *", "2h"), ("0 2 * * *", "2h"), ("0 3 * * *", "2h")], "2024-01-01 04:30",
        [("2024-01-01 01:00", "2024-01-01 05:00", "0 1 * * *")], id="walk-back-chain",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("items", "now", "expected"), OVERLAP_CASES)
def test_overlapping_windows_merge(
    items: list[tuple[str, str]], now: str, expected: list[tuple[str, str, str]]
) -> None:
    specs = [spec(c, d) for c, d in items]
    windows = next_windows(specs, utc(now), len(expected))
    got = [
        (w.start.strftime("%Y-%m-%d %H:%M"), w.end.strftime("%Y-%m-%d %H:%M"), w.spec.cron)
        for w in windows
    ]
    assert got == expected


def test_never_closing_windows_are_cut_into_touching_pieces() -> None:
    specs = [spec("0 * * * *", "90m")]  # hourly, 90 minutes: always open
    now = utc("2024-01-10 12:00")
    windows = next_windows(specs, now, 3)
    assert len(windows) == 3
    assert windows[0].contains(now)
    assert all(w.length <= MAX_SPAN for w in windows)
    assert windows[0].end == windows[1].start and windows[1].end == windows[2].start
    assert current_window(specs, now) == windows[0]


def test_merge_across_specs_in_different_zones() -> None:
    # 01:00 Berlin (00:00 UTC in winter) for 3h and 19:00 New York (00:00 UTC) for 1h.
    specs = [spec("0 1 * * *", "3h", "Europe/Berlin"), spec("0 19 * * *", "4h", "America/New_York")]
    (window,) = next_windows(specs, utc("2024-01-09 23:00"), 1)
    assert (window.start, window.end) == (utc("2024-01-10 00:00"), utc("2024-01-10 04:00"))


def test_next_windows_edge_arguments() -> None:
    specs = [spec("0 1 * * *", "1h")]
    assert next_windows(specs, utc("2024-01-01 00:00"), 0) == []
    assert next_windows([], utc("2024-01-01 00:00"), 3) == []
    with pytest.raises(ValueError, match="count"):
        next_windows(specs, utc("2024-01-01 00:00"), -1)


@pytest.mark.parametrize(
    "call",
    [
        lambda s, n: next_windows(s, n, 1),
        lambda s, n: current_window(s, n),
        lambda s, n: remaining(Window(utc("2024-01-01 01:00"), utc("2024-01-01 02:00"), s[0]), n),
    ],
)
def test_naive_now_is_refused(call: object) -> None:
    specs = [spec("0 1 * * *", "1h")]
    with pytest.raises(ValueError, match="naive"):
        call(specs, datetime(2024, 1, 1, 0, 0))  # type: ignore[operator]


def test_now_in_another_zone_is_the_same_instant() -> None:
    specs = [spec("0 1 * * *", "1h", "Europe/Berlin")]
    berlin = datetime.fromisoformat("2024-01-01T01:30+01:00")
    assert current_window(specs, berlin) == current_window(specs, utc("2024-01-01 00:30"))


# -- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "expected"),
    [("3h", timedelta(hours=3)), ("1h30m", timedelta(minutes=90)), ("45m", timedelta(minutes=45)),
     (5400, timedelta(minutes=90)), ("7d", timedelta(days=7))],
)  # fmt: skip
def test_durations_accept_units(duration: object, expected: timedelta) -> None:
    parsed = WindowSpec.from_mapping({"cron": "0 1 * * *", "duration": duration})
    assert parsed.duration == expected
    assert parsed.timezone == "UTC"


INVALID_CASES = [
    ({"cron": "0 1 * *", "duration": "3h"}, r"window cron '0 1 \* \*': needs 5 fields"),
    ({"cron": "61 1 * * *", "duration": "3h"}, r"window cron '61 1 \* \* \*'"),
    ({"cron": "0 25 * * *", "duration": "3h"}, r"window cron '0 25 \* \* \*'"),
    ({"cron": "0 1 * * 8", "duration": "3h"}, r"window cron .*day of week '8'"),
    ({"cron": "0 1 * * 5-2", "duration": "3h"}, r"window cron .*runs backwards"),
    ({"cron": "0 1 * * funday", "duration": "3h"}, r"window cron .*day of week 'funday'"),
    ({"cron": "0 1 1 * 1", "duration": "3h"}, r"window cron .*both set"),
    ({"cron": "0 0 30 2 *", "duration": "3h"}, r"window cron '0 0 30 2 \*': never fires"),
    ({"cron": "", "duration": "3h"}, r"window cron '': must be a crontab expression"),
    ({"cron": "0 1 * * *", "duration": "3x"}, r"window duration '3x': not a duration"),
    ({"cron": "0 1 * * *", "duration": "0s"}, r"window duration 0:00:00: must be more than 0"),
    ({"cron": "0 1 * * *", "duration": "8d"}, r"window duration 8 days.*at most 7d"),
    ({"cron": "0 1 * * *", "duration": -5}, r"window duration -5: not a duration"),
    ({"cron": "0 1 * * *", "duration": None}, r"window duration None: not a duration"),
    (
        {"cron": "0 1 * * *", "duration": "3h", "timezone": "Mars/Olympus"},
        r"window timezone 'Mars/Olympus': unknown time zone",
    ),
    (
        {"cron": "0 1 * * *", "duration": "3h", "timezone": "../etc/passwd"},
        r"window timezone '\.\./etc/passwd': unknown time zone",
    ),
    ({"duration": "3h"}, r"window cron: missing"),
    ({"cron": "0 1 * * *"}, r"window duration: missing"),
    ({"cron": "0 1 * * *", "duration": "3h", "tz": "UTC"}, r"window: unknown key\(s\) 'tz'"),
]


@pytest.mark.parametrize(("data", "message"), INVALID_CASES)
def test_invalid_specs_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidWindow, match=message) as info:
        WindowSpec.from_mapping(data)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_spec_from_config_model() -> None:
    from warmer.config import WindowConfig

    item = WindowConfig.model_validate(
        {"cron": "0 1 * * 1-5", "duration": "1h30m", "timezone": "Europe/Berlin"}
    )
    assert WindowSpec.coerce(item) == WindowSpec(
        "0 1 * * 1-5", timedelta(minutes=90), "Europe/Berlin"
    )


# -- CLI ------------------------------------------------------------------------------------

BERLIN = "0 1 * * 1-5|3h|Europe/Berlin"


def test_cli_text_shows_local_and_utc() -> None:
    result = CliRunner().invoke(
        cli, ["windows", "--window", BERLIN, "--at", "2024-03-29T00:30Z", "--next", "3"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "given windows: next 3 window(s) after Fri 2024-03-29 00:30 UTC"
    assert "Fri 2024-03-29 01:00 CET -> Fri 2024-03-29 04:00 CET" in lines[1]
    assert "(Fri 2024-03-29 00:00 UTC -> Fri 2024-03-29 03:00 UTC)" in lines[1]
    assert "open, 2h30m left" in lines[1]
    assert "Mon 2024-04-01 01:00 CEST" in lines[2] and "Sun 2024-03-31 23:00 UTC" in lines[2]
    assert "Tue 2024-04-02 01:00 CEST" in lines[3] and "open" not in lines[3]
    assert len(lines) == 4


def test_cli_json() -> None:
    result = CliRunner().invoke(
        cli, ["windows", "--window", BERLIN, "--at", "2024-03-29T01:30+01:00", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 5
    assert rows[0] == {
        "region": None,
        "start": "2024-03-29T00:00:00+00:00",
        "end": "2024-03-29T03:00:00+00:00",
        "local_start": "2024-03-29T01:00:00+01:00",
        "local_end": "2024-03-29T04:00:00+01:00",
        "timezone": "Europe/Berlin",
        "cron": "0 1 * * 1-5",
        "seconds": 10800,
        "open": True,
        "remaining_seconds": 9000,
    }
    assert [r["local_start"][:16] for r in rows[1:]] == [
        "2024-04-01T01:00", "2024-04-02T01:00", "2024-04-03T01:00", "2024-04-04T01:00",
    ]  # fmt: skip
    assert not any(r["open"] for r in rows[1:])


def test_cli_reads_region_windows_from_config(tmp_path: Path) -> None:
    config = tmp_path / "warmer.toml"
    config.write_text(
        """
[upstreams.hub]
url = "http://127.0.0.1:5000"

[mirrors.eu]
url = "http://127.0.0.1:5001"
parent = "hub"

[regions.eu]
mirrors = ["eu"]
windows = [
  { cron = "0 1 * * 1-5", duration = "3h", timezone = "Europe/Berlin" },
  { cron = "30 1 * * *", duration = "1h", timezone = "America/New_York" },
]
"""
    )
    args = ["--config", str(config), "windows", "--region", "eu", "--at", "2024-11-02T12:00Z"]
    result = CliRunner().invoke(cli, [*args, "--next", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["region"], r["local_start"]) for r in rows] == [
        ("eu", "2024-11-03T01:30:00-04:00"),
        ("eu", "2024-11-04T01:00:00+01:00"),
        ("eu", "2024-11-04T01:30:00-05:00"),
    ]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0 and text.output.startswith("region eu: next 5 window(s)")

    unknown = CliRunner().invoke(cli, ["--config", str(config), "windows", "--region", "us"])
    assert unknown.exit_code == 2
    assert "unknown region 'us'" in unknown.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "0 1 * *|3h|UTC"], "--window '0 1 * *|3h|UTC': window cron"),
        (["--window", "0 1 * * *|3h|Nowhere/City"], "window timezone 'Nowhere/City'"),
        (["--window", "0 1 * * *"], "expected 'CRON|DURATION|TIMEZONE'"),
        (["--window", BERLIN, "--at", "2024-03-29T12:00"], "--at '2024-03-29T12:00': needs a UTC"),
        (["--window", BERLIN, "--at", "yesterday"], "not an ISO 8601"),
        ([], "give --region R"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["windows", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
