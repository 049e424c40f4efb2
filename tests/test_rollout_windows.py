"""Maintenance windows: parsing, validation, and when one is open, across time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.services.rollout.policy import Window
from fleetkeeper.services.rollout.windows import (
    WindowError,
    can_start,
    next_start,
    open_until,
    parse_window,
    validate,
)

NIGHTLY = Window(cron="0 2 * * *", duration=7200)  # 02:00-04:00 UTC


def utc(day: int, hour: int, minute: int = 0, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


# --- parsing and validation --------------------------------------------------------------------


def test_a_window_parses_from_an_object() -> None:
    window = parse_window({"cron": "0 2 * * *", "duration": "2h", "timezone": "Europe/Berlin"})
    assert window == Window(cron="0 2 * * *", duration=7200, timezone="Europe/Berlin")


def test_a_window_parses_from_a_string() -> None:
    assert parse_window("0 2 * * *;2h;Europe/Berlin") == Window(
        cron="0 2 * * *", duration=7200, timezone="Europe/Berlin"
    )
    assert parse_window(" 30 1 * * 1-5 ; 5400 ") == Window(cron="30 1 * * 1-5", duration=5400)


def test_a_parsed_window_is_in_utc_unless_told() -> None:
    assert parse_window({"cron": "0 2 * * *", "duration": 60}).timezone == "UTC"


def test_a_window_passes_through_parsing_unchanged() -> None:
    assert parse_window(NIGHTLY) is NIGHTLY


@pytest.mark.parametrize("text", ["0 2 * * *", "0 2 * * *;2h;UTC;extra", ";2h", "0 2 * * *;"])
def test_a_string_needs_a_cron_and_a_duration(text: str) -> None:
    with pytest.raises(WindowError, match="cron;duration"):
        parse_window(text)


@pytest.mark.parametrize("value", [None, 42, ["0 2 * * *", "2h"]])
def test_a_window_is_an_object_or_a_string(value: object) -> None:
    with pytest.raises(WindowError, match="object"):
        parse_window(value)


def test_a_bad_duration_is_named() -> None:
    with pytest.raises(WindowError, match="duration") as error:
        parse_window({"cron": "0 2 * * *", "duration": "soon"})
    assert "soon" in str(error.value)


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(WindowError, match="zone"):
        parse_window({"cron": "0 2 * * *", "duration": 60, "zone": "UTC"})


@pytest.mark.parametrize("cron", ["61 * * * *", "0 25 * * *", "every night", "0 2 * * * *"])
def test_a_bad_cron_is_named(cron: str) -> None:
    with pytest.raises(WindowError, match="cron") as error:
        validate(Window(cron=cron, duration=3600))
    assert repr(cron) in str(error.value)


def test_a_cron_that_never_fires_is_refused() -> None:
    with pytest.raises(WindowError, match="never fires"):
        validate(Window(cron="0 0 31 2 *", duration=3600))


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "", "../etc/passwd"])
def test_an_unknown_time_zone_is_named(zone: str) -> None:
    with pytest.raises(WindowError, match="unknown time zone") as error:
        validate(Window(cron="0 2 * * *", duration=3600, timezone=zone))
    assert repr(zone) in str(error.value)


def test_a_window_that_lasts_no_time_is_refused() -> None:
    with pytest.raises(WindowError, match="never opens"):
        parse_window("0 2 * * *;0")


def test_cron_macros_are_allowed() -> None:
    assert validate(Window(cron="@daily", duration=3600)).cron == "@daily"


def test_parsing_checks_the_cron_too() -> None:
    with pytest.raises(WindowError, match="cron"):
        parse_window("61 * * * *;1h")


# --- open or closed ----------------------------------------------------------------------------


def test_a_window_is_open_until_its_end() -> None:
    assert open_until(NIGHTLY, utc(5, 3)) == utc(5, 4)


def test_a_window_is_open_at_the_moment_it_opens() -> None:
    assert open_until(NIGHTLY, utc(5, 2)) == utc(5, 4)


def test_a_window_is_closed_at_its_end_and_before_it_opens() -> None:
    assert open_until(NIGHTLY, utc(5, 4)) is None
    assert open_until(NIGHTLY, utc(5, 1, 59)) is None


def test_a_window_may_run_past_midnight() -> None:
    late = Window(cron="0 22 * * *", duration=4 * 3600)
    assert open_until(late, utc(6, 1)) == utc(6, 2)


def test_overlapping_occurrences_keep_the_window_open_to_the_last_end() -> None:
    hourly = Window(cron="0 * * * *", duration=90 * 60)
    assert open_until(hourly, utc(5, 3, 10)) == utc(5, 4, 30)


def test_a_window_follows_its_time_zone_summer_and_winter() -> None:
    berlin = Window(cron="0 2 * * *", duration=7200, timezone="Europe/Berlin")
    assert open_until(berlin, utc(15, 1, 30)) == utc(15, 3)  # CET: 02:00 is 01:00 UTC
    assert open_until(berlin, utc(15, 0, 30, month=7)) == utc(15, 2, month=7)  # CEST


def test_the_end_comes_back_in_the_callers_zone() -> None:
    tokyo_now = utc(5, 3).astimezone(ZoneInfo("Asia/Tokyo"))
    until = open_until(NIGHTLY, tokyo_now)
    assert until == utc(5, 4) and until is not None and until.tzinfo == tokyo_now.tzinfo


def test_a_time_skipped_by_dst_opens_the_window_at_the_first_time_that_exists() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    berlin = Window(cron="30 2 * * *", duration=3600, timezone="Europe/Berlin")
    assert open_until(berlin, datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) is None
    assert open_until(berlin, datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(
        2026, 3, 29, 2, 0, tzinfo=UTC
    )


def test_a_duration_is_elapsed_time_across_a_dst_change() -> None:
    # Opens 01:00 CET (00:00 UTC), two real hours later it is 04:00 CEST (02:00 UTC).
    berlin = Window(cron="0 1 * * *", duration=7200, timezone="Europe/Berlin")
    assert open_until(berlin, datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(
        2026, 3, 29, 2, 0, tzinfo=UTC
    )


def test_a_time_repeated_by_dst_opens_the_window_twice() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    berlin = Window(cron="30 2 * * *", duration=1800, timezone="Europe/Berlin")
    first, second = (
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    )
    assert open_until(berlin, first) == first + timedelta(minutes=30)
    assert open_until(berlin, first + timedelta(minutes=45)) is None
    assert open_until(berlin, second) == second + timedelta(minutes=30)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        open_until(NIGHTLY, datetime(2026, 1, 5, 3))


# --- can a device start, and when next ---------------------------------------------------------


def test_no_windows_means_always_open() -> None:
    assert can_start([], utc(5, 12), needed=3600)


def test_a_start_needs_the_window_to_stay_open_long_enough() -> None:
    assert can_start([NIGHTLY], utc(5, 3), needed=3600)
    assert not can_start([NIGHTLY], utc(5, 3, 1), needed=3600)
    assert not can_start([NIGHTLY], utc(5, 12), needed=60)


def test_any_open_window_will_do() -> None:
    noon = Window(cron="0 12 * * *", duration=3600)
    assert can_start([NIGHTLY, noon], utc(5, 12, 15), needed=900)


def test_the_next_start_is_now_when_a_device_may_start_now() -> None:
    assert next_start([NIGHTLY], utc(5, 2, 30), needed=3600) == utc(5, 2, 30)


def test_the_next_start_is_the_next_opening() -> None:
    assert next_start([NIGHTLY], utc(5, 12), needed=3600) == utc(6, 2)
    assert next_start([NIGHTLY], utc(5, 3, 30), needed=3600) == utc(6, 2)


def test_the_next_start_is_the_earliest_of_several_windows() -> None:
    noon = Window(cron="0 12 * * *", duration=3600)
    assert next_start([NIGHTLY, noon], utc(5, 5), needed=900) == utc(5, 12)


def test_there_is_no_next_start_without_windows() -> None:
    assert next_start([], utc(5, 12), needed=60) is None


def test_a_window_shorter_than_needed_never_qualifies() -> None:
    assert next_start([NIGHTLY], utc(5, 12), needed=7201) is None
    short = Window(cron="* * * * *", duration=30)
    assert next_start([short, NIGHTLY], utc(5, 12), needed=3600) == utc(6, 2)


def test_the_next_start_skips_an_occurrence_with_too_little_left() -> None:
    berlin = Window(cron="30 2 * * *", duration=3600, timezone="Europe/Berlin")
    now = datetime(2026, 10, 25, 0, 31, tzinfo=UTC)  # in the first 02:30, 59 minutes left
    assert next_start([berlin], now, needed=3599) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


crons = st.one_of(
    st.builds("{} {} * * *".format, st.integers(0, 59), st.integers(0, 23)),
    st.builds("*/{} * * * *".format, st.sampled_from([5, 15, 20, 30])),
    st.builds("0 {} * * 1-5".format, st.integers(0, 23)),
    st.just("30 2 * * *"),
)
zones = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]
)
# Around the spring and autumn clock changes of both hemispheres, and anywhere in between.
instants = st.one_of(
    st.datetimes(datetime(2026, 3, 27), datetime(2026, 4, 7), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 10, 1), datetime(2026, 11, 3), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
)


@settings(max_examples=80, deadline=None)
@given(
    cron=crons,
    zone=zones,
    duration=st.integers(60, 30 * 3600),
    needed=st.integers(0, 4 * 3600),
    now=instants,
)
def test_the_next_start_is_a_start_and_none_comes_earlier(
    cron: str, zone: str, duration: int, needed: int, now: datetime
) -> None:
    window = Window(cron=cron, duration=duration, timezone=zone)
    start = next_start([window], now, needed)
    if duration < needed:
        assert start is None
        return
    assert start is not None and start >= now
    assert can_start([window], start, needed)
    step = max((start - now) / 30, timedelta(seconds=1))
    probe = now
    while probe < start:
        assert not can_start([window], probe, needed)
        probe += step


@settings(max_examples=150, deadline=None)
@given(
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    duration=st.integers(1, 3 * 86400),
    now=instants,
)
def test_a_daily_utc_window_agrees_with_plain_arithmetic(
    hour: int, minute: int, duration: int, now: datetime
) -> None:
    window = Window(cron=f"{minute} {hour} * * *", duration=duration)
    opened = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if opened > now:
        opened -= timedelta(days=1)
    end = opened + timedelta(seconds=duration)
    assert open_until(window, now) == (end if now < end else None)
