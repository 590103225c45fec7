"""Structured logs: one JSON object per record, with the plugin's fields kept as fields."""

from __future__ import annotations

import json
import logging

from weir.cli._logging import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("weir.cni-plugin", logging.WARNING, __file__, 1, "ADD %s", ("failed",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_scope_level_message_and_fields() -> None:
    entry = json.loads(JsonFormatter().format(record(fields={"pod": "shop/web", "error": "boom"})))
    assert entry["scope"] == "weir.cni-plugin"
    assert entry["level"] == "warning"
    assert entry["msg"] == "ADD failed"
    assert entry["pod"] == "shop/web"
    assert entry["time"].endswith("Z")
    assert "\n" not in JsonFormatter().format(record())


def test_fields_never_overwrite_the_record_keys() -> None:
    entry = json.loads(JsonFormatter().format(record(fields={"msg": "spoofed", "level": "debug"})))
    assert entry["msg"] == "ADD failed"
    assert entry["level"] == "warning"


def test_text_appends_fields() -> None:
    assert TextFormatter().format(record(fields={"pod": "shop/web"})).endswith("ADD failed pod=shop/web")
