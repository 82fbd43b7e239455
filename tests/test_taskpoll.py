"""The poll schedule and what a task's answer means: pure, with plain values."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from ocrwatch.taskpoll import (
    SCALE_ENV,
    Decision,
    Next,
    PollSchedule,
    decide,
    poll_scale,
)


def test_schedule_starts_at_two_seconds_and_grows_to_fifteen():
    """The waits are 2 s after the upload, then 1.5 times the last, never above 15 s."""
    schedule = PollSchedule()

    waits = [round(schedule.delay_s(n), 2) for n in range(8)]

    assert [2.0, 3.0, 4.5, 6.75, 10.12, 15.0, 15.0, 15.0] == waits


def test_schedule_never_overflows():
    """A task polled thousands of times still waits 15 s, not an overflow."""
    assert 15.0 == PollSchedule().delay_s(10_000)


@pytest.mark.parametrize(
    ("value", "first"),
    [
        pytest.param("0.05", 0.1, id="scaled"),
        pytest.param("nonsense", 2.0, id="ignored-if-not-a-number"),
        pytest.param("5", 2.0, id="never-longer"),
    ],
)
def test_schedule_scale_for_tests(value, first):
    """OCRWATCH_POLL_SCALE shortens the schedule for tests; anything else leaves it."""
    assert first == pytest.approx(PollSchedule.from_env({SCALE_ENV: value}).first_s)


@pytest.mark.parametrize(
    ("value", "base_url", "scale"),
    [
        pytest.param("0.05", "http://127.0.0.1:8080", 0.05, id="emulator"),
        pytest.param("0.05", "http://localhost:8080", 0.05, id="localhost"),
        pytest.param("0.05", "http://[::1]:8080", 0.05, id="ipv6-loopback"),
        pytest.param("0.000001", "http://127.0.0.1:8080", 0.05, id="floored"),
        pytest.param("0.05", "https://ocr.example.com", 1.0, id="real-service"),
        pytest.param("0.05", "http://10.0.0.5:8080", 1.0, id="lan-host"),
        pytest.param(None, "http://127.0.0.1:8080", 1.0, id="unset"),
    ],
)
def test_schedule_scale_only_against_loopback(value, base_url, scale):
    """The test knob never shortens polls against a real service, and never below 0.05
    (a GET every 0.1 s at the most)."""
    assert scale == pytest.approx(poll_scale(value, base_url))


def test_a_scaled_schedule_is_logged():
    """A scaled schedule says so, so that one left on in production shows in the log."""
    with capture_logs() as logs:
        schedule = PollSchedule.from_env({SCALE_ENV: "0.1"}, "http://127.0.0.1:1")

    assert pytest.approx(0.2) == schedule.first_s
    assert [("poll_schedule.scaled", 0.1)] == [
        (e["event"], e["scale"]) for e in logs if e["event"] == "poll_schedule.scaled"
    ]


def _decide(status, *, polls=0, resubmits=0, now=10.0, deadline=600.0, messages=()):
    return decide(
        status,
        messages=messages,
        polls=polls,
        resubmits=resubmits,
        deadline=deadline,
        timeout_s=600.0,
        now=now,
        schedule=PollSchedule(),
    )


def test_completed_is_written():
    assert Next.WRITE is _decide("Completed").next


@pytest.mark.parametrize("status", ["Pending", "Processing", "SomethingNew"])
def test_not_done_is_asked_again_on_schedule(status):
    """A task not done yet is asked about again after the next wait of the schedule."""
    assert Decision(Next.AGAIN, at=10.0 + 3.0) == _decide(status, polls=0)


def test_the_last_poll_is_at_the_deadline():
    """The wait is cut short at the deadline, so the timeout is noticed on time."""
    assert Decision(Next.AGAIN, at=600.0) == _decide("Processing", polls=9, now=595.0)


def test_past_the_deadline_is_a_timeout_in_minutes():
    """No result by fetch_timeout: a timeout saying how long was waited."""
    decision = _decide("Processing", now=600.0)

    assert (Next.TIMEOUT, "no result after 10 min") == (decision.next, decision.reason)


def test_error_gives_the_services_messages():
    decision = _decide("Error", messages=("image is too dark", " "))

    assert (
        Next.FAIL,
        "the service could not recognize it: image is too dark",
    ) == (decision.next, decision.reason)


def test_not_exist_is_sent_once_more_then_fails():
    """NotExist: one resubmission; lost again after it, a failure that says so."""
    first, second = _decide("NotExist"), _decide("NotExist", resubmits=1)

    assert (Next.RESUBMIT, Next.FAIL) == (first.next, second.next)
    assert "lost the task twice" in second.reason


def test_not_exist_past_the_deadline_is_no_automatic_upload():
    """Still asked about past the deadline only because asking failed (an outage, an answer
    that could not be read), a task the service no longer has is not uploaded again by the
    daemon: that billed upload is `retry`'s, so that no loop can repeat it."""
    decision = _decide("NotExist", now=600.0)

    assert Next.FAIL is decision.next
    assert "`ocrwatch retry` sends it again (billed)" in decision.reason
