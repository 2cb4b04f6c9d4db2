"""The dashboard page: the read API's documents rendered as tables into static/index.html.

The page reads without JavaScript; static/app.js then redraws the same sections from the JSON
API every few seconds (heat colours, charts, controls). Both render the same markup, so what
a browser shows without a reload is what the server sent on the first load.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterable
from importlib import resources

from aiohttp import web

from routing_sidecar.http_api import documents
from routing_sidecar.http_api import views as v
from routing_sidecar.http_api.backend import Backend, Settings
from routing_sidecar.http_api.handlers import MAX_HOURS, matrix_by
from routing_sidecar.http_api.request import query_int

HEAT_STEPS = 9
RECENT = 20
ASSETS = ("app.js", "style.css")
TEMPLATE = resources.files("routing_sidecar.http_api").joinpath("static/index.html")


def asset(name: str) -> bytes:
    """One of the page's static files, as shipped in the package."""
    return resources.files("routing_sidecar.http_api").joinpath(f"static/{name}").read_bytes()


def usd(micros: int) -> str:
    """Micro-USD as dollars, with as many decimals as small amounts need (as app.js does)."""
    if micros == 0:
        return "$0"
    digits = 6 if abs(micros) < 10_000 else 4 if abs(micros) < 10_000_000 else 2
    return f"${micros / 1e6:,.{digits}f}"


def pct(rate: float) -> str:
    """A rate as a percentage with one decimal."""
    return f"{rate * 100:.1f}%"


def when(t: object) -> str:
    """An RFC 3339 time as the page shows it (UTC, to the second)."""
    text = getattr(t, "isoformat", lambda: "")()
    return text[:19].replace("T", " ") + "Z" if text else "-"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _row(cells: Iterable[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _badge(state: str, text: str | None = None, ident: str = "") -> str:
    where = f' id="{ident}"' if ident else ""
    return (f'<span{where} class="badge state-{_e(state or "none")}">'
            f'{_e(text or state or "-")}</span>')


def heat(spend: int, top: int) -> int:
    """Heat step 0..HEAT_STEPS of a cell's estimated spend against the largest cell's."""
    return 0 if top <= 0 else min(HEAT_STEPS, round(HEAT_STEPS * spend / top))


def matrix_table(m: v.Matrix) -> str:
    """Models down, dimension values across; each cell decisions and $/decision."""
    if not m.cells:
        return '<p class="empty">No routed decisions in this window yet.</p>'
    cells = {(c.model, c.value): c for c in m.cells}
    top = max(c.decisions * c.estimated_cost_micros_per_decision for c in m.cells)
    head = _row(["model", *(_e(x) for x in m.values)], "th")
    body = []
    for model in m.models:
        tds = [f'<th scope="row">{_e(model)}</th>']
        for value in m.values:
            c = cells.get((model, value))
            if c is None:
                tds.append('<td class="cell none">-</td>')
                continue
            spend = c.decisions * c.estimated_cost_micros_per_decision
            tds.append(
                f'<td class="cell heat-{heat(spend, top)}" data-model="{_e(model)}" '
                f'data-value="{_e(value)}" data-decisions="{c.decisions}" '
                f'data-cost="{c.estimated_cost_micros_per_decision}" '
                f'data-fallback-rate="{c.fallback_rate}">'
                f'<b>{c.decisions}</b> <span>{usd(c.estimated_cost_micros_per_decision)}</span>'
                f'{f" <i>fb {pct(c.fallback_rate)}</i>" if c.fallback_decisions else ""}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def providers_table(m: v.Matrix) -> str:
    """Provider economics over the matrix's window."""
    head = _row(["provider", "decisions", "input tokens", "output tokens", "spend",
                 "$/1M tokens", "fallback rate", "error rate", "detection"], "th")
    rows = [_row([_e(p.provider), str(p.decisions), f"{p.input_tokens:,}",
                  f"{p.output_tokens:,}", usd(p.spend_micros),
                  usd(p.blended_cost_micros_per_mtok), pct(p.fallback_rate), pct(p.error_rate),
                  _badge(p.detection_state)]) for p in m.providers]
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def budgets_table(c: v.Costs) -> str:
    """Each budget scope as a utilisation bar with its state and period end."""
    if not c.budgets:
        return '<p class="empty">No budgets configured.</p>'
    head = _row(["scope", "period", "used", "spent", "reserved", "limit", "state",
                 "period ends"], "th")
    rows = [_row([
        _e(b.scope), _e(b.period),
        f'<meter min="0" max="1" low="0.8" high="0.99" optimum="0" '
        f'value="{min(b.utilisation, 1.0):.4f}">{pct(b.utilisation)}</meter> {pct(b.utilisation)}',
        usd(b.spent_micros), usd(b.reserved_micros), usd(b.limit_micros), _badge(b.state),
        when(b.period_end)]) for b in c.budgets]
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def cache_panel(c: v.Costs) -> str:
    """Cache hit rate and dollars saved over the last day (off when the cache is)."""
    k = c.cache
    state = "on" if k.enabled else "off"
    return (f'<dl class="figures"><dt>hit rate</dt><dd>{pct(k.hit_rate)}</dd>'
            f"<dt>hits / misses</dt><dd>{k.hits} / {k.misses}</dd>"
            f"<dt>saved</dt><dd>{usd(k.saved_micros)}</dd></dl>"
            f'<p class="note cache-{state}">{_e(k.note)}</p>')


def activity_tables(a: v.Activity) -> str:
    """The two time series as tables (app.js draws them as charts)."""
    minutes = [_row([when(p.start)[11:16], str(p.decisions)])
               for p in a.decisions_per_minute if p.decisions]
    hours = [_row([when(p.start)[5:16], str(p.decisions), usd(p.spend_micros)])
             for p in a.spend_per_hour]
    return ("<details><summary>figures</summary><table><thead>"
            + _row(["minute", "decisions"], "th") + "</thead><tbody>" + "".join(minutes)
            + "</tbody></table><table><thead>" + _row(["hour", "decisions", "spend"], "th")
            + "</thead><tbody>" + "".join(hours) + "</tbody></table></details>")


def _alternatives(d: v.DecisionItem) -> str:
    head = _row(["model", "provider", "tier", "score", "est. cost", "fate", "why"], "th")
    rows = [
        f'<tr class="alt {"chosen" if a.chosen else ""}" data-model="{_e(a.model)}">'
        f"<td>{_e(a.model)}</td><td>{_e(a.provider)}</td><td>{a.tier}</td>"
        f"<td>{a.score:.4g}</td><td>{usd(a.estimated_cost_micros)}</td>"
        f"<td>{_e(a.rejection)}</td><td>{_e(a.reason)}</td></tr>"
        for a in d.alternatives
    ]
    return (f'<table class="alternatives"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def decision_block(d: v.DecisionItem) -> str:
    """One decision: a summary line that expands to its why, alternatives and attempts."""
    outcome = "no outcome yet"
    if d.outcome is not None:
        ok = "succeeded" if d.outcome.success else "failed"
        outcome = f"{ok}, actual {usd(d.outcome.actual_cost_micros)}, " \
                  f"{len(d.attempts)} attempt{'s' * (len(d.attempts) != 1)}"
    labels = " ".join(f"{_e(k)}={_e(x)}" for k, x in sorted(d.labels.items()))
    return (
        f'<details class="decision" data-id="{_e(d.decision_id)}"><summary>'
        f'<time>{when(d.decided_at)}</time> <b>{_e(d.task_type)}</b> &rarr; '
        f'<span class="model">{_e(d.model or d.status)}</span> {_badge(d.status.lower())} '
        f"{usd(d.estimated_cost_micros)} <small>{labels}</small></summary>"
        f'<p class="reason">{_e(d.reason)}</p>'
        f'<p class="meta">policy {_e(d.policy)}, objective {_e(d.objective)}, '
        f"{_e(outcome)}; task {_e(d.task_id)}</p>{_alternatives(d)}</details>")


def models_table(p: v.Performance) -> str:
    """Each catalog model's breaker and pause, and each provider's, with their controls."""
    head = _row(["model", "provider", "tier", "breaker", "routing", ""], "th")
    rows = [
        f'<tr data-model="{_e(m.name)}"><td>{_e(m.name)}</td><td>{_e(m.provider)}</td>'
        f"<td>{m.tier}</td><td>{_badge(m.breaker)}</td>"
        f'<td>{_badge("paused" if m.paused else "active")}</td><td class="controls"></td></tr>'
        for m in p.models
    ]
    providers = [
        f'<tr data-provider="{_e(x.name)}"><td>{_e(x.name)}</td><td>{_badge(x.breaker)}</td>'
        f'<td>{_badge(x.detection_state)}</td><td class="controls"></td></tr>'
        for x in p.providers
    ]
    return (f'<table id="model-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody>'
            f'</table><table id="provider-table"><thead>'
            + _row(["provider", "breaker", "detection", ""], "th")
            + f'</thead><tbody>{"".join(providers)}</tbody></table>')


def by_options(m: v.Matrix) -> str:
    """The matrix's dimension choices: task type and every label key seen."""
    keys = [documents.TASK_TYPE, *[k for k in m.label_keys if k != documents.TASK_TYPE]]
    if m.by not in keys:
        keys.append(m.by)
    return "".join(f'<option value="{_e(k)}"{" selected" if k == m.by else ""}>'
                   f"{_e(k.replace('_', ' '))}</option>" for k in keys)


HOUR_CHOICES = (1, 6, 24, 168)


def hours_options(hours: int) -> str:
    """The window choices, the current one selected."""
    choices = sorted({*HOUR_CHOICES, hours})
    return "".join(f'<option value="{h}"{" selected" if h == hours else ""}>{h} h</option>'
                   for h in choices)


async def page(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """GET /: the dashboard, server-rendered."""
    hours = query_int(request, "hours", 24, 1, MAX_HOURS)
    by = matrix_by(request)
    m, d, a = await asyncio.gather(documents.matrix(b, hours, by),
                                   documents.decisions(b, RECENT), documents.activity(b))
    c, p = await documents.costs(b), documents.performance(b)
    serving = await b.serving()
    parts = {
        "health": _badge("healthy", "SERVING", "health") if serving
        else _badge("degraded", "NOT_SERVING", "health"),
        "by_options": by_options(m), "hours_options": hours_options(hours),
        "matrix": matrix_table(m),
        "providers": providers_table(m), "budgets": budgets_table(c), "cache": cache_panel(c),
        "activity": activity_tables(a), "models": models_table(p),
        "decisions": "".join(decision_block(x) for x in d.decisions)
        or '<p class="empty">No decisions yet.</p>',
        "generated": when(c.generated_at),
    }
    text = TEMPLATE.read_text(encoding="utf-8")
    for key, fragment in parts.items():
        text = text.replace(f"<!--@{key}-->", fragment)
    return web.Response(text=text, content_type="text/html",
                        headers={"Cache-Control": "no-store"})
