"""JSON-lines logging: one parseable object per line with the documented fields."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from controller.runtime.logs import bind, configure_logging, parse_level


@pytest.fixture
def logger() -> logging.Logger:
    # A private logger per test, so the root logger and pytest's capture are left alone.
    log = logging.getLogger(f"respawn-test-{uuid.uuid4().hex}")
    log.propagate = False
    return log


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_extra_fields(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(level="debug", stream=stream, logger=logger)
    logger.info("restarting %s", "pods", extra={"job": "ns/train", "attempt": 2})
    logger.debug("multi\nline")
    first, second = lines(stream)
    assert first["msg"] == "restarting pods"
    assert first["level"] == "info" and first["logger"] == logger.name
    assert first["job"] == "ns/train" and first["attempt"] == 2
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["msg"] == "multi\nline" and second["level"] == "debug"


def test_level_filters_and_reconfiguring_does_not_duplicate(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(level="warning", stream=stream, logger=logger)
    configure_logging(level="WARNING", stream=stream, logger=logger)
    logger.info("hidden")
    logger.warning("shown")
    assert [line["msg"] for line in lines(stream)] == ["shown"]


def test_exceptions_and_odd_values_stay_on_one_line(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed", extra={"obj": object()})
    (line,) = lines(stream)
    assert "RuntimeError: boom" in line["exc"]
    assert line["obj"].startswith("<object object")


def test_bind_adds_fields_and_merges_call_site_extra(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    log = bind(bind(logger, job="ns/a"), controller="respawn")
    log.info("step", extra={"attempt": 3})
    (line,) = lines(stream)
    assert (line["job"], line["controller"], line["attempt"]) == ("ns/a", "respawn", 3)


def test_parse_level() -> None:
    assert parse_level("Info") == logging.INFO
    assert parse_level(15) == 15
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("loud")
