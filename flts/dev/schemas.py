"""Generated documentation artefacts (JSON Schemas of the event contracts)."""
from __future__ import annotations

from pathlib import Path

import orjson

from flts.events import json_schemas


def rendered_schemas() -> dict[str, bytes]:
    return {f"{event_type}.json": orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
            for event_type, schema in json_schemas().items()}


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered_schemas().items():
        path = out / name
        path.write_bytes(content)
        paths.append(path)
    return paths
