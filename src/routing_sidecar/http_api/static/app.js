// The routing dashboard: redraws the server-rendered sections from the JSON API every few
// seconds, adds heat colours, charts and the operator controls. Plain JS, no dependencies;
// every value from the API goes into the page as text, never as markup.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const HEAT_STEPS = 9;
  const RECENT = 20;
  const TOKEN_KEY = "routing-sidecar-admin-token";
  const $ = (id) => document.getElementById(id);

  // -- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Money as dashboard.py writes it: more decimals for smaller amounts.
  function usd(micros) {
    if (micros === 0) return "$0";
    const a = Math.abs(micros);
    const digits = a < 10000 ? 6 : a < 10000000 ? 4 : 2;
    return "$" + (micros / 1e6).toLocaleString("en-US",
      { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  const pct = (rate) => (rate * 100).toFixed(1) + "%";
  const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") + "Z" : "-");
  const badge = (state) => el("span", { class: "badge state-" + (state || "none") }, state || "-");
  const num = (n) => n.toLocaleString("en-US");

  function table(headers, rows, attrs) {
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }
  const row = (cells, attrs) => el("tr", attrs || {}, cells.map((c) => el("td", {}, c)));

  function replace(id, ...nodes) {
    const box = $(id);
    box.replaceChildren(...nodes);
    box.setAttribute("data-loaded", String(Date.now()));
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  function matrixQuery() {
    const by = $("by").value || "task_type";
    const hours = $("hours").value || "24";
    return "by=" + encodeURIComponent(by) + "&hours=" + encodeURIComponent(hours);
  }

  // -- sections --------------------------------------------------------------------------

  function heat(spend, top) {
    return top <= 0 ? 0 : Math.min(HEAT_STEPS, Math.round(HEAT_STEPS * spend / top));
  }

  function renderMatrix(m) {
    const select = $("by");
    const keys = ["task_type", ...m.label_keys.filter((k) => k !== "task_type")];
    if (!keys.includes(m.by)) keys.push(m.by);
    select.replaceChildren(...keys.map((k) =>
      el("option", { value: k, selected: k === m.by }, k.replace(/_/g, " "))));
    if (m.cells.length === 0) {
      replace("matrix", el("p", { class: "empty" }, "No routed decisions in this window yet."));
      return;
    }
    const cells = new Map(m.cells.map((c) => [c.model + "\u0000" + c.value, c]));
    const top = Math.max(...m.cells.map((c) => c.decisions * c.estimated_cost_micros_per_decision));
    const rows = m.models.map((model) => el("tr", {},
      el("th", { scope: "row" }, model),
      m.values.map((value) => {
        const c = cells.get(model + "\u0000" + value);
        if (!c) return el("td", { class: "cell none" }, "-");
        const spend = c.decisions * c.estimated_cost_micros_per_decision;
        return el("td", {
          class: "cell heat-" + heat(spend, top), "data-model": model, "data-value": value,
          "data-decisions": c.decisions, "data-cost": c.estimated_cost_micros_per_decision,
          "data-fallback-rate": c.fallback_rate,
          title: model + " on " + value + ": " + c.decisions + " decisions, est. " +
            usd(c.estimated_cost_micros_per_decision) + " each, actual " +
            usd(c.actual_cost_micros_per_decision),
        }, el("b", {}, c.decisions), " ", el("span", {}, usd(c.estimated_cost_micros_per_decision)),
        c.fallback_decisions ? [" ", el("i", {}, "fb " + pct(c.fallback_rate))] : null);
      })));
    replace("matrix", table(["model", ...m.values], rows));
  }

  function renderProviders(m) {
    replace("providers", table(
      ["provider", "decisions", "input tokens", "output tokens", "spend", "$/1M tokens",
        "fallback rate", "error rate", "detection"],
      m.providers.map((p) => row([p.provider, p.decisions, num(p.input_tokens),
        num(p.output_tokens), usd(p.spend_micros), usd(p.blended_cost_micros_per_mtok),
        pct(p.fallback_rate), pct(p.error_rate), badge(p.detection_state)]))));
  }

  function renderBudgets(c) {
    if (c.budgets.length === 0) {
      replace("budgets", el("p", { class: "empty" }, "No budgets configured."));
      return;
    }
    replace("budgets", table(
      ["scope", "period", "used", "spent", "reserved", "limit", "state", "period ends"],
      c.budgets.map((b) => row([b.scope, b.period,
        [el("meter", { min: 0, max: 1, low: 0.8, high: 0.99, optimum: 0,
          value: Math.min(b.utilisation, 1).toFixed(4) }, pct(b.utilisation)), " ",
        pct(b.utilisation)],
        usd(b.spent_micros), usd(b.reserved_micros), usd(b.limit_micros), badge(b.state),
        when(b.period_end)]))));
  }

  function renderCache(c) {
    const k = c.cache;
    replace("cache",
      el("dl", { class: "figures" },
        el("dt", {}, "hit rate"), el("dd", {}, pct(k.hit_rate)),
        el("dt", {}, "hits / misses"), el("dd", {}, k.hits + " / " + k.misses),
        el("dt", {}, "saved"), el("dd", {}, usd(k.saved_micros))),
      el("p", { class: "note cache-" + (k.enabled ? "on" : "off") }, k.note));
  }

  function bars(points, value, label) {
    const width = 600, height = 120, pad = 18;
    const top = Math.max(1, ...points.map(value));
    const step = (width - pad) / Math.max(1, points.length);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": label, preserveAspectRatio: "none" });
    chart.append(svg("line", { x1: pad, y1: height - pad, x2: width, y2: height - pad,
      class: "axis" }));
    chart.append(svg("text", { x: 0, y: 10, class: "scale" }, label.startsWith("$") ?
      usd(top) : String(top)));
    points.forEach((p, i) => {
      const h = (height - 2 * pad) * value(p) / top;
      const bar = svg("rect", { x: pad + i * step + 1, y: height - pad - h,
        width: Math.max(1, step - 2), height: h, class: "bar" });
      bar.append(svg("title", {}, when(p.start) + ": " + p.decisions + " decisions, " +
        usd(p.spend_micros)));
      chart.append(bar);
    });
    return chart;
  }

  function renderActivity(a) {
    $("chart-decisions").replaceChildren(bars(a.decisions_per_minute, (p) => p.decisions,
      "decisions per minute"));
    $("chart-spend").replaceChildren(bars(a.spend_per_hour, (p) => p.spend_micros,
      "$ spend per hour"));
    const minutes = a.decisions_per_minute.filter((p) => p.decisions)
      .map((p) => row([when(p.start).slice(11, 16), p.decisions]));
    const hours = a.spend_per_hour.map((p) =>
      row([when(p.start).slice(5, 16), p.decisions, usd(p.spend_micros)]));
    const open = $("activity").querySelector("details")?.open;
    replace("activity", el("details", { open: !!open }, el("summary", {}, "figures"),
      table(["minute", "decisions"], minutes), table(["hour", "decisions", "spend"], hours)));
  }

  function decisionBlock(d, open) {
    let outcome = "no outcome yet";
    if (d.outcome) {
      const n = d.attempts.length;
      outcome = (d.outcome.success ? "succeeded" : "failed") + ", actual " +
        usd(d.outcome.actual_cost_micros) + ", " + n + " attempt" + (n === 1 ? "" : "s");
    }
    const labels = Object.keys(d.labels).sort().map((k) => k + "=" + d.labels[k]).join(" ");
    return el("details", { class: "decision", "data-id": d.decision_id, open },
      el("summary", {}, el("time", {}, when(d.decided_at)), " ", el("b", {}, d.task_type),
        " \u2192 ", el("span", { class: "model" }, d.model || d.status), " ",
        badge(d.status.toLowerCase()), " ", usd(d.estimated_cost_micros), " ",
        el("small", {}, labels)),
      el("p", { class: "reason" }, d.reason),
      el("p", { class: "meta" }, "policy " + d.policy + ", objective " + d.objective + ", " +
        outcome + "; task " + d.task_id),
      table(["model", "provider", "tier", "score", "est. cost", "fate", "why"],
        d.alternatives.map((a) => el("tr", { class: "alt " + (a.chosen ? "chosen" : ""),
          "data-model": a.model }, [a.model, a.provider, a.tier, Number(a.score.toPrecision(4)),
          usd(a.estimated_cost_micros), a.rejection, a.reason].map((c) => el("td", {}, c)))),
        { class: "alternatives" }));
  }

  function renderDecisions(d) {
    const open = new Set([...document.querySelectorAll("#decisions details[open]")]
      .map((x) => x.getAttribute("data-id")));
    if (d.decisions.length === 0) {
      replace("decisions", el("p", { class: "empty" }, "No decisions yet."));
      return;
    }
    replace("decisions", ...d.decisions.map((x) => decisionBlock(x, open.has(x.decision_id))));
  }

  function button(text, path) {
    return el("button", { type: "button", "data-action": path }, text);
  }

  function renderModels(p) {
    const models = p.models.map((m) => el("tr", { "data-model": m.name },
      [m.name, m.provider, m.tier, badge(m.breaker), badge(m.paused ? "paused" : "active"),
        [m.paused ? button("resume", `/api/routing/models/${encodeURIComponent(m.name)}/resume`)
          : button("pause", `/api/routing/models/${encodeURIComponent(m.name)}/pause`),
        m.breaker !== "closed" ? button("reset breaker",
          `/api/routing/breakers/model/${encodeURIComponent(m.name)}/reset`) : null],
      ].map((c, i) => el("td", i === 5 ? { class: "controls" } : {}, c))));
    const providers = p.providers.map((x) => el("tr", { "data-provider": x.name },
      [x.name, badge(x.breaker), badge(x.detection_state),
        x.breaker !== "closed" ? button("reset breaker",
          `/api/routing/breakers/provider/${encodeURIComponent(x.name)}/reset`) : null,
      ].map((c, i) => el("td", i === 3 ? { class: "controls" } : {}, c))));
    replace("models",
      table(["model", "provider", "tier", "breaker", "routing", ""], models, { id: "model-table" }),
      table(["provider", "breaker", "detection", ""], providers, { id: "provider-table" }));
  }

  // -- refresh and actions ---------------------------------------------------------------

  async function refreshHealth() {
    try {
      const response = await fetch("/health");
      const body = await response.json();
      $("health").replaceWith(el("span", { id: "health",
        class: "badge state-" + (body.status === "SERVING" ? "healthy" : "degraded") },
      body.status));
    } catch (err) {
      $("health").replaceWith(el("span", { id: "health", class: "badge state-degraded" },
        "unreachable"));
    }
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const [m, c, p, d, a] = await Promise.all([
        getJson("/api/routing/matrix?" + matrixQuery()), getJson("/api/routing/costs"),
        getJson("/api/routing/performance"), getJson("/api/routing/decisions?limit=" + RECENT),
        getJson("/api/routing/activity"), refreshHealth()]);
      renderMatrix(m);
      renderProviders(m);
      renderBudgets(c);
      renderCache(c);
      renderActivity(a);
      renderDecisions(d);
      renderModels(p);
      $("generated").textContent = when(c.generated_at);
      $("refresh-note").textContent = "";
      document.body.setAttribute("data-refreshed", String(Date.now()));
    } catch (err) {
      $("refresh-note").textContent = "refresh failed: " + err.message;
    } finally {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  async function act(path) {
    const token = $("token").value.trim();
    const note = $("action-note");
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch(path, { method: "POST", headers });
      const body = await response.json();
      note.textContent = response.ok ? "done: " + path.split("/").slice(-2).join(" ")
        : body.error.message;
      note.className = "note " + (response.ok ? "ok" : "error");
    } catch (err) {
      note.textContent = "failed: " + err.message;
      note.className = "note error";
    }
    refresh();
  }

  function start() {
    const tokenForm = $("token-form");
    tokenForm.hidden = false;
    $("charts").hidden = false;
    const token = $("token");
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
    tokenForm.addEventListener("submit", (event) => event.preventDefault());
    const onChange = () => {
      history.replaceState(null, "", "/?" + matrixQuery());
      refresh();
    };
    $("by").addEventListener("change", onChange);
    $("hours").addEventListener("change", onChange);
    $("models").addEventListener("click", (event) => {
      const target = event.target.closest("button[data-action]");
      if (target) act(target.getAttribute("data-action"));
    });
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
