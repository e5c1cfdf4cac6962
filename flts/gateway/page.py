"""The status page (GET /): one server-rendered HTML page, refreshed every 10 s by the browser. No
script beyond one attribute: a plot marks itself `data-loaded` once the browser has drawn it (the
headless-browser test reads that)."""
from __future__ import annotations

from html import escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
.done,.FINISHED,.promoted{color:#176f2c}.FAILED,.failed,.dead-lettered{color:#b00020}
section{border-top:2px solid #ddd;margin-top:1.5rem;padding-top:.5rem}img{max-width:900px;border:1px solid #ccc}
code{font-size:.9em}
"""


def render(pipelines: list[dict], kafka: bool) -> str:
    body = "".join(_pipeline(p, kafka) for p in pipelines) or "<p>No uploads yet: <code>POST /upload/&lt;identifier&gt;</code>.</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='10'>"
            f"<title>FLTS pipelines</title><style>{STYLE}</style></head><body><h1>FLTS pipelines</h1>"
            f"{_summary(pipelines)}{body}</body></html>")


def _summary(pipelines: list[dict]) -> str:
    rows = "".join(
        f"<tr><td><a href='#{escape(p['identifier'])}'>{escape(p['identifier'])}</a></td>"
        f"<td class='{escape(p['state'])}'>{escape(p['state'])}</td><td>{escape(_stage(p))}</td>"
        f"<td>{escape(_champion_name(p))}</td><td>{escape(str((p['champion'] or {}).get('timestamp') or '-'))}</td></tr>"
        for p in pipelines)
    return ("<table id='summary'><tr><th>identifier</th><th>state</th><th>stage</th><th>champion</th>"
            f"<th>last promotion</th></tr>{rows}</table>") if pipelines else ""


def _stage(p: dict) -> str:
    done = [s["stage"] for s in p["stages"] if s["state"] in ("done", "FINISHED")]
    return done[-1] if done else "-"


def _champion_name(p: dict) -> str:
    c = p["champion"]
    return f"{c['model_type']} (run {c['run_id'][:8]})" if c else "none yet"


def _pipeline(p: dict, kafka: bool) -> str:
    ident = escape(p["identifier"])
    parts = [f"<section id='{ident}'><h2>{ident} <span class='{escape(p['state'])}'>{escape(p['state'])}</span></h2>",
             f"<p><a href='/pipelines/{ident}'>JSON</a></p>", _stages(p["stages"]), _champion(p), _letters(p, kafka)]
    return "".join(parts) + "</section>"


def _stages(stages: list[dict]) -> str:
    if not stages:
        return "<p>No upload through the gateway.</p>"
    rows = "".join(
        f"<tr><td>{escape(s['stage'])}</td><td class='{escape(str(s['state']))}'>{escape(str(s['state']))}</td>"
        f"<td>{escape(str(s.get('time') or '-'))}</td><td>{escape(_detail(s))}</td></tr>" for s in stages)
    return f"<table class='stages'><tr><th>stage</th><th>outcome</th><th>time</th><th>detail</th></tr>{rows}</table>"


def _detail(s: dict) -> str:
    if s.get("error"):
        return s["error"][:300]
    if s.get("metrics"):
        return ", ".join(f"{k} {v:.4g}" for k, v in s["metrics"].items())
    return str(s.get("config_hash") or s.get("run_id") or s.get("artifact") or "")


def _champion(p: dict) -> str:
    c = p["champion"]
    if not c:
        return "<p class='champion'>No champion yet.</p>"
    metrics = ", ".join(f"{k} {c[k]:.4g}" for k in ("score", "rmse", "mae", "mse") if c.get(k) is not None)
    return (f"<div class='champion'><h3>Champion: {escape(c['model_type'])}</h3>"
            f"<p>run <code>{escape(c['run_id'])}</code>, promoted {escape(str(c['timestamp']))}; {escape(metrics)}; "
            f"<a href='{escape(c['model_url'])}'>model</a> · <a href='{escape(c['pointer_url'])}'>pointer</a></p>"
            f"<img class='plot' alt='forecast vs actual of {escape(c['model_type'])}' src='{escape(c['plot_url'])}' "
            "onload='this.dataset.loaded=1'>"
            "</div>")


def _letters(p: dict, kafka: bool) -> str:
    letters = p["dead_letters"]
    if letters is None:
        return "<p>Dead letters: unknown (no Kafka configured or reachable).</p>" if kafka else ""
    if not letters:
        return "<p class='dead-letters'>No dead letters.</p>"
    rows = "".join(
        f"<tr><td>{escape(str(x['time']))}</td><td>dlq-{escape(str(x['topic']).removeprefix('dlq-'))}</td>"
        f"<td>{escape(str(x['function']))}</td><td class='failed'>{escape(x['error'])}</td></tr>" for x in letters)
    return ("<h3>Dead letters</h3><table class='dead-letters'><tr><th>time</th><th>topic</th><th>function</th>"
            f"<th>error</th></tr>{rows}</table>")
