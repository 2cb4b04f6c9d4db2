"""What a Grafana PromQL query reads: metrics, label matchers, groupings, the labels it yields.

Parsed with promql-parser (the Rust PromQL parser), after Grafana's time macros are replaced by
durations; template variables stay inside label values, where they must be. The checks are the
mistakes that make a dashboard panel silently empty or wrong: a metric or label the sidecar does
not export, a counter read without rate(), a per-pod series left unaggregated, a legend naming
a label the query drops, two sides of a division grouped differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import promql_parser as pp

MACROS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LEGEND_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LABEL_VALUES_RE = re.compile(r"^label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)$")
RANGE_FUNCTIONS = frozenset({"rate", "increase", "irate"})
KEEP_LABELS = frozenset({"topk", "bottomk", "limitk", "limit_ratio"})
# Added by the scrape (job, instance) or by the deployment (pod, namespace), not the sidecar.
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")

Samples = Mapping[str, Sequence[Mapping[str, str]]]  # sample name -> label sets


@dataclass(frozen=True)
class Selector:
    """One vector selector and where it sits."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)
    under_range_function: bool
    aggregated: bool


@dataclass
class Query:
    """Everything one expression reads and yields."""

    selectors: list[Selector] = field(default_factory=list)
    groupings: list[tuple[frozenset[str], frozenset[str]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    labels: frozenset[str] | None = None  # None: every label of the selected series


def variables(text: str) -> set[str]:
    """Template variables used in a query, Grafana's own macros left out."""
    names = {a or b for a, b in VARIABLE_RE.findall(text)}
    return {n for n in names if not n.startswith("__")}


def parse(expr: str) -> pp.Expr:
    """The expression with Grafana's time macros replaced by durations."""
    for macro, value in MACROS.items():
        expr = expr.replace("${" + macro + "}", value).replace("$" + macro, value)
    return pp.parse(expr)


def analyse(expr: str) -> Query:
    """Walk the expression once; see the module docstring for what is collected."""
    q = Query()
    q.labels = _walk(parse(expr), q, aggregated=False, in_range=False)
    return q


def _walk(node: pp.Expr, q: Query, *, aggregated: bool, in_range: bool) -> frozenset[str] | None:
    if isinstance(node, pp.VectorSelector):
        matchers = tuple((m.name, str(m.op).split(".")[-1], m.value)
                         for m in node.matchers.matchers)
        q.selectors.append(Selector(node.name or "", matchers, in_range, aggregated))
        return None
    if isinstance(node, pp.MatrixSelector):
        return _walk(node.vector_selector, q, aggregated=aggregated, in_range=in_range)
    if isinstance(node, pp.Call):
        return _call(node, q, aggregated=aggregated)
    if isinstance(node, pp.AggregateExpr):
        return _aggregate(node, q)
    if isinstance(node, pp.BinaryExpr):
        return _binary(node, q, aggregated=aggregated)
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        return _walk(node.expr, q, aggregated=aggregated, in_range=in_range)
    return frozenset()  # a number or string literal: a scalar has no labels


def _call(node: pp.Call, q: Query, *, aggregated: bool) -> frozenset[str] | None:
    name = node.func.name
    out: list[frozenset[str] | None] = [
        _walk(a, q, aggregated=aggregated, in_range=name in RANGE_FUNCTIONS) for a in node.args]
    if name == "histogram_quantile":
        inner = out[1]
        if inner is not None and "le" not in inner:
            q.problems.append("histogram_quantile over series grouped without le")
        return None if inner is None else inner - {"le"}
    vectors = [o for o, a in zip(out, node.args, strict=True)
               if not isinstance(a, pp.NumberLiteral | pp.StringLiteral)]
    return vectors[0] if vectors else frozenset()


def _aggregate(node: pp.AggregateExpr, q: Query) -> frozenset[str] | None:
    start = len(q.selectors)
    inner = _walk(node.expr, q, aggregated=True, in_range=False)
    if node.param is not None:
        _walk(node.param, q, aggregated=True, in_range=False)
    below = frozenset(s.name for s in q.selectors[start:])
    mod = node.modifier
    if str(node.op) in KEEP_LABELS:
        return inner
    if mod is None:
        return frozenset()
    if mod.type == pp.AggModifierType.By:
        q.groupings.append((frozenset(mod.labels), below))
        return frozenset(mod.labels)
    return None if inner is None else inner - set(mod.labels)


def _binary(node: pp.BinaryExpr, q: Query, *, aggregated: bool) -> frozenset[str] | None:
    lhs = _walk(node.lhs, q, aggregated=aggregated, in_range=False)
    rhs = _walk(node.rhs, q, aggregated=aggregated, in_range=False)
    scalar_l = isinstance(node.lhs, pp.NumberLiteral)
    scalar_r = isinstance(node.rhs, pp.NumberLiteral)
    matching = node.modifier.matching if node.modifier is not None else None
    if (not scalar_l and not scalar_r and matching is None and lhs is not None
            and rhs is not None and lhs != rhs):
        q.problems.append(f"{node.op}: sides grouped by {sorted(lhs)} and {sorted(rhs)} "
                          "never match")
    return rhs if scalar_l else lhs


def _matches(value: str, op: str, wanted: str) -> bool:
    if "$" in wanted:  # a template variable: any value may be chosen
        return True
    if op == "Equal":
        return value == wanted
    if op == "NotEqual":
        return value != wanted
    hit = re.fullmatch(wanted, value) is not None  # PromQL regexes are anchored
    return hit if op == "Re" else not hit


def check(expr: str, samples: Samples, legend: str = "") -> list[str]:
    """Every problem of one panel query against the samples a real /metrics exported."""
    q = analyse(expr)
    problems = list(q.problems)
    for s in q.selectors:
        series = samples.get(s.name)
        if not series:
            problems.append(f"{s.name}: not exported")
            continue
        exported = set().union(*(set(labels) for labels in series))
        for label, _, _ in s.matchers:
            if label not in exported | TARGET_LABELS:
                problems.append(f"{s.name}: no label {label!r} (has {sorted(exported)})")
        if not any(all(_matches(labels.get(k, ""), op, v) for k, op, v in s.matchers)
                   for labels in series):
            problems.append(f"{s.name}{dict((k, v) for k, _, v in s.matchers)}: selects nothing")
        if s.name.endswith(COUNTER_SUFFIXES) and not s.under_range_function:
            problems.append(f"{s.name}: a counter read without rate() or increase()")
        if not s.aggregated:
            problems.append(f"{s.name}: not aggregated across pods")
    for by, names in q.groupings:
        known = set(TARGET_LABELS)
        for n in names:
            known.update(*(set(labels) for labels in samples.get(n, ())))
        if missing := by - known:
            problems.append(f"by {sorted(by)}: {sorted(missing)} on none of {sorted(names)}")
    if q.labels is not None and (extra := set(LEGEND_RE.findall(legend)) - q.labels):
        problems.append(f"legend {legend!r} names {sorted(extra)}, not in {sorted(q.labels)}")
    return problems


def check_label_values(query: str, samples: Samples) -> list[str]:
    """A variable's label_values(metric, label) query against the exported samples."""
    m = LABEL_VALUES_RE.match(query.strip())
    if m is None:
        return [f"{query!r}: expected label_values(metric, label)"]
    metric, label = m.groups()
    series: Iterable[Mapping[str, str]] = samples.get(metric, ())
    if not series:
        return [f"{metric}: not exported"]
    if label not in TARGET_LABELS and not any(label in s for s in series):
        return [f"{metric}: no label {label!r}"]
    return []
