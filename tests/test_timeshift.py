from datetime import UTC, datetime

from replayproxy.timeshift import recording_delta, shift


def test_iso_times_keep_their_format() -> None:
    body = (
        b'{"a": "2026-01-01T10:00:00Z", "b": "2026-01-01 23:59:59.123+02:00",'
        b' "c": "2026-01-01T10:00:00.123456789Z", "job_id": 6238}'
    )
    out = shift(body, 3600)
    assert out == (
        b'{"a": "2026-01-01T11:00:00Z", "b": "2026-01-02 00:59:59.123+02:00",'
        b' "c": "2026-01-01T11:00:00.123456000Z", "job_id": 6238}'
    )


def test_unix_times_only_as_json_numbers() -> None:
    body = b'{"t": 1767261600, "ms": 1767261600000, "f": 1767261600.25, "id": 1234567890123456}'
    out = shift(body, 10)
    assert (
        out == b'{"t": 1767261610, "ms": 1767261610000, "f": 1767261610.25, "id": 1234567890123456}'
    )
    assert shift(b"token 1767261600 in text", 10) == b"token 1767261600 in text"


def test_delta_from_recording_time() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert recording_delta("2026-11-29T11:00:00+00:00", now) == 3600
    assert recording_delta(None, now) == 0
