"""The settings tables in docs/*.md, generated from the settings models (`flts settings-docs`).

A table sits between `<!-- settings:NAME -->` and `<!-- /settings:NAME -->`, NAME a key of
MODELS; everything between the markers is rewritten, the text around them is not.
"""
from __future__ import annotations

import re
from pathlib import Path

from flts.settings import Settings, variables
from flts.spec import load

# Marker name → the settings model ("module:Class", imported when rendered) its table shows.
MODELS = {
    "storage": "flts.storage:StorageSettings",
    "auth": "flts.auth:EventAuthSettings",
    "preprocess": "flts.preprocess.settings:PreprocessSettings",
    "train": "flts.train.settings:TrainSettings",
    "eval": "flts.eval.settings:EvalSettings",
    "infer": "flts.infer.settings:ServingSettings",
    "gateway": "flts.gateway.settings:GatewaySettings",
    "dispatcher": "flts.dispatcher.settings:DispatchSettings",
    "frontdoor": "flts.dev.frontdoor:FrontdoorSettings",
    "stack": "flts.dev.scaling:ScaleSettings",
    "logging": "flts.logs:LogSettings",
}

_BLOCK = re.compile(r"(?P<open><!-- settings:(?P<name>[\w-]+) -->\n).*?(?P<close><!-- /settings:(?P=name) -->)", re.S)


def _default(value: str | None) -> str:
    if value is None:
        return "(required)"
    return f"`{value}`" if value else "empty"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the cell


def table(model: type[Settings]) -> str:
    rows = [f"| `{v.name}` | {_default(v.default)} | {_cell(v.description)} |" for v in variables(model)]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"


def _model(name: str) -> type[Settings]:
    if name not in MODELS:
        raise KeyError(f"<!-- settings:{name} --> names no settings model (known: {sorted(MODELS)})")
    return load(MODELS[name])


def render(text: str) -> str:
    """The text with every marked table regenerated."""
    return _BLOCK.sub(lambda m: m["open"] + table(_model(m["name"])) + m["close"], text)


def write_docs(docs: Path) -> list[Path]:
    """Regenerate the tables in docs/*.md; the files that changed."""
    changed = []
    for path in sorted(docs.glob("*.md")):
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            path.write_text(rendered)
            changed.append(path)
    return changed
