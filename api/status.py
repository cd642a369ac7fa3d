"""``GET /status``: one HTML page for an operator in an incident, no build step, no CDN.

Circuits (state, time to the next probe, call limit and calls in flight), queues (depth
and oldest age), batches in progress (their backlog), what the cluster has finished by
source, and the last 50 outcomes. It is what the background monitor last read
(``api.cluster``, at most ``CLUSTER_EVERY_S`` old) and reloads itself every
``REFRESH_S``.

An admin key opens it, as a bearer token or as the password of HTTP Basic auth (any user
name), so a browser asks for it and remembers it for the session. Every value is escaped;
the page names owners by their id, never a key.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.auth import authenticate
from api.cluster import ClusterSnapshot
from api.probes import Monitor
from core.settings import get_settings

__all__ = ["REFRESH_S", "router"]

REFRESH_S = 5
router = APIRouter(include_in_schema=False)

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="genq status", charset="UTF-8"'}
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
td { white-space: nowrap; } #recent td { font: 12px ui-monospace, monospace; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) td { background: #f4f4f6; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-closed { color: #17692f; } .state-open, .state-forced_open { color: #b00020; }
.state-half-open { color: #9a5b00; } .bad { color: #b00020; } .muted { color: #777; }
"""


@router.get("/status", response_class=HTMLResponse)
async def status_page(request: Request) -> HTMLResponse:
    """The cluster as the monitor last read it; an admin key (bearer or basic) opens it."""
    if not _is_admin(request.headers.get("authorization", "")):
        body = "<p>An admin key opens this page: give it as the password.</p>"
        return HTMLResponse(body, status_code=401, headers=_CHALLENGE)
    monitor: Monitor = request.app.state.monitor
    cluster: ClusterSnapshot | None = monitor.cluster if monitor.redis.fresh_up() else None
    headers = {"Cache-Control": "no-store"}
    return HTMLResponse(render(cluster, time.time()), headers=headers)


def _is_admin(header: str) -> bool:
    scheme, _, value = header.partition(" ")
    key = value.strip()
    if scheme.lower() == "basic":
        try:
            key = base64.b64decode(key, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    principal = authenticate(key, get_settings()) if key else None
    return principal is not None and principal.admin


def render(cluster: ClusterSnapshot | None, now: float) -> str:
    """The whole page."""
    if cluster is None:
        parts = ['<p class="bad" id="redis">Redis is not answering: nothing to show.</p>']
    else:
        parts = [
            f'<p class="muted">Read {now - cluster.read_at:.0f} s ago, at {_clock(cluster.read_at)}'
            f" UTC; this page reloads every {REFRESH_S} s.</p>",
            "<h2>Circuits</h2>",
            _circuits(cluster.circuits),
            "<h2>Queues</h2>",
            _table(
                ("queue", "ready", "oldest waiting"),
                [(q.name, q.depth, f"{q.oldest_age_s:.1f} s") for q in cluster.queues],
                "queues",
            ),
            "<h2>Batches in progress</h2>",
            _batches(cluster),
            "<h2>Finished, by source</h2>",
            _finished(cluster),
            "<h2>Last 50 outcomes</h2>",
            _recent(cluster.recent),
        ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>genq status</title><style>{_STYLE}</style></head>"
        "<body><h1>genq status</h1>" + "".join(parts) + "</body></html>"
    )


def _circuits(circuits: list[dict[str, Any]]) -> str:
    rows = []
    for circuit in circuits:
        limit = circuit.get("limit") or {}
        state = str(circuit["state"])
        probe = f"{circuit['retry_after']:.1f} s" if state != "closed" else ""
        rows.append(
            f'<tr data-circuit="{escape(circuit["name"])}" data-state="{escape(state)}">'
            f"<td>{escape(circuit['name'])}</td>"
            f'<td class="state-{escape(state)}">{escape(state)}</td>'
            f'<td class="num">{probe}</td>'
            f'<td class="num">{circuit["failure_count"]}</td>'
            f'<td class="num">{escape(str(limit.get("limit", "")))}</td>'
            f'<td class="num">{escape(str(limit.get("in_flight", "")))}</td></tr>'
        )
    head = ("circuit", "state", "next probe in", "failures", "call limit", "in flight")
    return _wrap(head, rows, "circuits")


def _batches(cluster: ClusterSnapshot) -> str:
    rows = [
        (b.batch_id, b.owner, b.status, b.total, b.waiting, b.unfinished) for b in cluster.batches
    ]
    head = ("batch", "owner id", "status", "items", "waiting to be released", "not final")
    return _table(head, rows, "batches") if rows else '<p class="muted">None.</p>'


def _finished(cluster: ClusterSnapshot) -> str:
    by_source: Counter[tuple[str, str]] = Counter()
    for labels, count in cluster.stats.finished.items():
        queue, status, source = labels[:3]
        by_source[(queue, source or status)] += count
    rows = [(queue, source, n) for (queue, source), n in sorted(by_source.items())]
    return _table(("queue", "source (or failed)", "jobs"), rows, "finished")


def _recent(recent: list[dict[str, Any]]) -> str:
    rows = [
        (
            _clock(entry.get("at", 0)),
            entry.get("job_id", ""),
            entry.get("batch_id") or "",
            entry.get("status", ""),
            entry.get("source") or entry.get("error_type", ""),
            entry.get("fallback_reason", ""),
            entry.get("circuit", ""),
            "" if entry.get("latency_ms") is None else f"{entry['latency_ms']:.0f} ms",
        )
        for entry in recent
    ]
    head = ("at", "job", "batch", "status", "source", "why degraded", "circuit", "latency")
    return _table(head, rows, "recent") if rows else '<p class="muted">None yet.</p>'


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], name: str) -> str:
    cells = ["<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows]
    return _wrap(head, cells, name)


def _cell(value: object) -> str:
    if isinstance(value, int | float):
        return f'<td class="num">{value}</td>'
    return f"<td>{escape(str(value))}</td>"


def _wrap(head: Sequence[str], rows: list[str], name: str) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f'<table id="{name}"><tr>{header}</tr>{"".join(rows)}</table>'


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")
