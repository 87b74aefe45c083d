// The tally dashboard: one page, a view per hash route (#/overview?date=...), each drawn
// from the JSON API; /api/stream's events redraw the current view as batches land.


const GROUP_KEYS = ["agent", "role", "phase", "day", "week", "month", "model", "task",
  "session", "project", "branch"];
const SERIES_KEYS = ["agent", "model", "role", "phase", "project", "branch"];
const PERIODS = ["day", "week", "month"];
const STATUSES = ["started", "in_progress", "blocked", "completed", "failed"];
const main = document.getElementById("main");
const liveBadge = document.getElementById("live");
const errorBox = document.getElementById("error");
const sortState = {};
let renders = 0;
let rendering = null;
let again = false;

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmtInt = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 3 });
const fmtShort = (v) => (v === null || v === undefined ? "–" : compact.format(v));
const fmtUsd = (v) => (v === null || v === undefined ? "–" : "$" + v.toLocaleString("en-US",
  { minimumFractionDigits: 2, maximumFractionDigits: 2 }));

function cellText(column, value) {
  if (value === null || value === undefined) return "–";
  if (column.endsWith("cost_usd")) return fmtUsd(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "number") {
    if (column.endsWith("ratio")) return (value * 100).toFixed(1) + "%";
    return Number.isInteger(value) ? fmtInt(value) : value.toLocaleString("en-US");
  }
  return String(value);
}

function clean(params) {
  const kept = {};
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") kept[k] = v;
  return kept;
}

async function api(path, params = {}) {
  const response = await fetch(`/api/${path}?${new URLSearchParams(clean(params))}`,
    { credentials: "same-origin" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(`${body.error}${body.hint ? " (" + body.hint + ")" : ""}`);
  }
  return response.json();
}

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const view = views[path] ? path : "overview";
  return { view, params: Object.fromEntries(new URLSearchParams(query || "")) };
}

function go(view, params) {
  const query = new URLSearchParams(clean(params)).toString();
  location.hash = `#/${view}${query ? "?" + query : ""}`;
}

function control(label, input) {
  return el("label", {}, label, input);
}

function input(name, value, attrs = {}) {
  return el("input", { name, value: value || "", ...attrs });
}

function select(name, options, value) {
  return el("select", { name }, options.map((o) => el("option", { value: o, selected: o === value }, o)));
}

function form(view, params, fields, extra = []) {
  // A change of any field shows the view again with the form's values in the address.
  const node = el("form", { class: "controls" }, fields, extra);
  const submit = (event) => {
    event.preventDefault();
    const values = { ...params };
    for (const field of node.elements) {
      if (!field.name) continue;
      if (field.type === "checkbox") continue;
      values[field.name] = field.value;
    }
    const keys = [...node.querySelectorAll("input[type=checkbox][name=by]:checked")].map((c) => c.value);
    if (node.querySelector("input[type=checkbox][name=by]")) values.by = keys.join(",");
    go(view, values);
  };
  node.addEventListener("change", submit);
  node.addEventListener("submit", submit);
  return node;
}

async function drawChart(target, params) {
  const spec = await api("chart", params);
  spec.width = "container";
  spec.autosize = { type: "fit-x", contains: "padding" };
  target.replaceChildren();
  if (!spec.data.values.length) {
    target.append(el("p", { class: "muted" }, "no events in this range"));
    return;
  }
  await window.vegaEmbed(target, spec, { actions: false, renderer: "svg" });
  target.dataset.drawn = String(spec.data.values.length);
}

function table(rows, { key, totals = false, columns = null, cells = {} } = {}) {
  if (!rows.length) return el("p", { class: "muted" }, "nothing to show");
  const names = columns || Object.keys(rows[0]);
  const state = sortState[key] || {};
  const sorted = [...rows];
  if (state.column) {
    const sign = state.desc ? -1 : 1;
    sorted.sort((a, b) => {
      const x = a[state.column], y = b[state.column];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
  }
  const numeric = Object.fromEntries(names.map((n) => [n, rows.some((r) => typeof r[n] === "number")]));
  const head = el("tr", {}, names.map((name) => el("th", {
    class: ["sortable", numeric[name] ? "n" : "", state.column === name ? (state.desc ? "sorted-desc" : "sorted-asc") : ""].join(" "),
    "data-column": name,
    onclick: () => {
      sortState[key] = { column: name, desc: state.column === name ? !state.desc : numeric[name] };
      render();
    },
  }, name.replace(/_usd$/, " ($)").replace(/_/g, " "))));
  const body = sorted.map((row) => el("tr", {}, names.map((name) => el("td",
    { class: numeric[name] ? "n" : "", "data-column": name },
    Object.hasOwn(cells, name) ? cells[name](row[name], row) : cellText(name, row[name])))));
  if (totals) {
    const sums = names.map((name, i) => {
      if (i === 0) return "total";
      if (!numeric[name] || name.endsWith("ratio")) return "";
      const values = rows.map((r) => r[name]).filter((v) => v !== null && v !== undefined);
      return values.length ? cellText(name, values.reduce((a, b) => a + b, 0)) : "–";
    });
    body.push(el("tr", { class: "total" }, sums.map((s, i) => el("td", { class: numeric[names[i]] ? "n" : "" }, s))));
  }
  return el("table", { "data-table": key }, el("thead", {}, head), el("tbody", {}, body));
}

// ---------------------------------------------------------------- views

async function overview(params) {
  const live = api("live").catch((error) => ({ error: error.message }));
  const data = await api("overview", { date: params.date, tz: params.tz });
  const measure = params.measure || "cost";
  const tile = (name, title, period) => el("div", {
    class: "tile", "data-testid": `tile-${name}`, "data-tokens": period.total_tokens,
    "data-cost": period.cost_usd ?? "", "data-events": period.events,
  }, el("h3", {}, title), el("div", { class: "big" }, fmtUsd(period.cost_usd)),
  el("div", { class: "sub" }, `${fmtInt(period.total_tokens)} tokens`),
  el("div", { class: "sub" }, `${fmtInt(period.events)} events`),
  el("div", { class: "sub" }, period.since === period.until ? period.since : `${period.since} – ${period.until}`));
  const burnTile = el("div", { class: "tile", "data-testid": "tile-burn" }, el("h3", {}, "Burn rate"),
    el("div", { class: "big" }, "…"));
  const gauges = el("div", { class: "gauges", "data-testid": "gauges" }, el("p", { class: "muted" }, "counting…"));
  const chart = el("div", { class: "chart", "data-testid": "chart" });
  const since = new Date(Date.parse(data.date + "T00:00:00Z") - 13 * 86400000).toISOString().slice(0, 10);
  const agents = new Map();  // not an object: an agent may be named "__proto__"
  for (const name of ["today", "week", "month"]) {
    for (const row of data[name].agents) {
      if (!agents.has(row.agent)) agents.set(row.agent, { agent: row.agent });
      agents.get(row.agent)[`${name}_tokens`] = row.total_tokens;
      agents.get(row.agent)[`${name}_cost_usd`] = row.cost_usd;
    }
  }
  const rows = [...agents.values()].map((a) => ({
    agent: a.agent, today_tokens: a.today_tokens ?? 0, today_cost_usd: a.today_cost_usd ?? null,
    week_tokens: a.week_tokens ?? 0, week_cost_usd: a.week_cost_usd ?? null,
    month_tokens: a.month_tokens ?? 0, month_cost_usd: a.month_cost_usd ?? null,
  }));
  main.replaceChildren(
    el("h1", {}, "Overview"),
    form("overview", params, [
      control("date", input("date", data.date, { type: "date" })),
      control("time zone", input("tz", data.tz, { size: 16 })),
      control("chart", select("measure", ["cost", "tokens"], measure)),
    ]),
    el("div", { class: "tiles" }, tile("today", "Today", data.today), tile("week", "This week", data.week),
      tile("month", "This month", data.month), burnTile),
    el("section", { class: "panel" }, el("h2", {}, "Budgets"), gauges),
    el("section", { class: "panel" }, el("h2", {}, `Last 14 days by agent (${measure})`), chart),
    el("section", { class: "panel" }, el("h2", {}, "Per agent"), table(rows, { key: "overview", totals: true })),
  );
  await Promise.all([
    drawChart(chart, { by: "day,agent", since, until: data.date, tz: data.tz, measure }),
    live.then((state) => showLive(state, burnTile, gauges)),
  ]);
}

function showLive(state, burnTile, gauges) {
  if (state.error) {
    gauges.replaceChildren(el("p", { class: "error" }, state.error));
    return;
  }
  const burn = state.burn;
  burnTile.replaceChildren(el("h3", {}, "Burn rate"),
    el("div", { class: "big" }, fmtUsd(burn.cost_per_hour), "/h"),
    el("div", { class: "sub" }, `${fmtShort(burn.tokens_per_minute)} tokens/min`),
    el("div", { class: "sub" }, `today ≈ ${fmtUsd(burn.projected_day_cost_usd)}, `,
      `${fmtShort(burn.projected_day_tokens)} tokens`),
    el("div", { class: "sub" }, state.from_lake ? "counted from the lake"
      : `published ${(state.updated || "").slice(11, 19)} UTC`));
  if (!state.budgets.length) {
    gauges.replaceChildren(el("p", { class: "muted" }, "no budgets configured ([budgets] in config.toml)"));
    return;
  }
  gauges.replaceChildren(...state.budgets.map((b) => {
    const cost = b.metric === "cost";
    const amount = (v) => (cost ? fmtUsd(v) : fmtInt(v));
    return el("div", { class: `gauge ${b.status}`, "data-scope": b.scope, "data-percentage": b.percentage },
      el("div", { class: "label" }, el("span", {}, `${b.scope} · ${b.period} ${b.metric}`),
        el("span", {}, `${amount(b.used)} / ${amount(b.budget)} (${b.percentage.toFixed(0)}%)`)),
      el("div", { class: "bar" }, el("div", { class: "fill", style: `width:${Math.min(100, b.percentage)}%` })));
  }));
}

async function usage(params) {
  const group = params.group || "agent";
  const period = params.period || "day";
  const measure = params.measure || "cost";
  const query = { since: params.since, until: params.until, tz: params.tz || "UTC" };
  const chart = el("div", { class: "chart", "data-testid": "chart" });
  main.replaceChildren(
    el("h1", {}, "Usage over time"),
    form("usage", params, [
      control("stack by", select("group", SERIES_KEYS, group)),
      control("per", select("period", PERIODS, period)),
      control("measure", select("measure", ["cost", "tokens"], measure)),
      control("since", input("since", params.since, { type: "date" })),
      control("until", input("until", params.until, { type: "date" })),
      control("time zone", input("tz", query.tz, { size: 16 })),
    ]),
    el("section", { class: "panel" }, chart),
  );
  await drawChart(chart, { ...query, by: `${period},${group}`, measure });
}

async function breakdown(params) {
  const by = params.by || "agent,model";
  const query = { by, since: params.since, until: params.until, tz: params.tz || "UTC",
    agent: params.agent, model: params.model, "cost-mode": params["cost-mode"] };
  const rows = await api("report", query);
  const chosen = by.split(",");
  main.replaceChildren(
    el("h1", {}, "Breakdown"),
    form("breakdown", params, [
      el("div", { class: "keys" }, GROUP_KEYS.map((k) => el("label", {},
        el("input", { type: "checkbox", name: "by", value: k, checked: chosen.includes(k) }), k))),
      control("since", input("since", params.since, { type: "date" })),
      control("until", input("until", params.until, { type: "date" })),
      control("agents", input("agent", params.agent, { placeholder: "all", size: 12 })),
      control("models", input("model", params.model, { placeholder: "all", size: 12 })),
      control("time zone", input("tz", query.tz, { size: 14 })),
      control("cost", select("cost-mode", ["auto", "calculate"], params["cost-mode"] || "auto")),
    ], [el("a", { class: "button", href: `/api/report?${new URLSearchParams(clean({ ...query, format: "csv" }))}`,
      "data-testid": "csv" }, "Download CSV")]),
    el("section", { class: "panel" }, table(rows, { key: "breakdown", totals: true })),
  );
}

async function tasks(params) {
  const rows = await api("progress", { agent: params.agent, status: params.status, tz: params.tz });
  main.replaceChildren(
    el("h1", {}, "Tasks"),
    form("tasks", params, [
      control("status", select("status", ["", ...STATUSES], params.status || "")),
      control("agents", input("agent", params.agent, { placeholder: "all", size: 12 })),
    ]),
    el("section", { class: "panel" }, table(rows, {
      key: "tasks",
      columns: ["agent", "task", "name", "status", "progress", "last_update", "tokens", "cost_usd", "remaining"],
      cells: {
        status: (v) => el("span", { class: `badge ${v}` }, v ?? "–"),
        progress: (v) => (v === null || v === undefined ? "–" : [el("span", { class: "progress" },
          el("span", { style: `width:${Math.max(0, Math.min(100, v))}%` })), `${v}%`]),
      },
    })),
  );
}

async function alerts(params) {
  const data = await api("alerts", { limit: params.limit });
  main.replaceChildren(
    el("h1", {}, "Alerts"),
    el("p", { class: "muted" }, `${fmtInt(data.total)} alert(s) in the alert log; `,
      `${fmtInt(data.pending_delivery)} waiting for delivery.`),
    el("section", { class: "panel" }, table(data.rows, {
      key: "alerts",
      columns: ["ts", "alert", "scope", "period", "period_start", "usage", "budget", "percentage"],
      cells: { alert: (v) => el("span", { class: `badge ${v}` }, v) },
    })),
  );
}

async function quarantine(params) {
  const data = await api("quarantine", { limit: params.limit, reason: params.reason });
  main.replaceChildren(
    el("h1", {}, "Quarantine"),
    el("p", { class: "muted" }, `${fmtInt(data.total)} rejected line(s); showing the newest `,
      `${fmtInt(data.rows.length)} of ${fmtInt(data.matching)}.`),
    form("quarantine", params, [
      control("reason", select("reason", ["", ...Object.keys(data.reasons)], params.reason || "")),
    ]),
    el("section", { class: "panel" }, table(data.rows, {
      key: "quarantine",
      columns: ["detected_at", "file", "line", "reason", "message", "excerpt"],
      cells: {
        reason: (v) => el("span", { class: "badge" }, v),
        excerpt: (v) => [el("code", { class: "excerpt", title: v }, v), " ",
          el("button", { class: "copy", type: "button", onclick: (e) => copy(v, e.target) }, "copy")],
      },
    })),
  );
}

function copy(text, button) {
  const done = () => { button.textContent = "copied"; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
}

function fallbackCopy(text, done) {
  const area = el("textarea", { style: "position:fixed;opacity:0" });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}

const views = { overview, usage, breakdown, tasks, alerts, quarantine };

// ---------------------------------------------------------------- drawing and live updates

async function render() {
  if (rendering) {
    again = true;
    return rendering;
  }
  const { view, params } = route();
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  document.body.dataset.view = view;
  rendering = (async () => {
    try {
      await views[view](params);
      errorBox.hidden = true;
      document.body.dataset.state = "ready";
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
      document.body.dataset.state = "error";
    }
    document.body.dataset.renders = String(++renders);
  })();
  await rendering;
  rendering = null;
  if (again) {
    again = false;
    await render();
  }
}

let refreshTimer = null;
let heldBack = false;

function typing() {
  const active = document.activeElement;
  return active && active.matches("main input:not([type=checkbox])");
}

function refreshSoon() {
  // A redraw would take the field someone is typing in: it waits until they leave it.
  if (typing()) {
    heldBack = true;
    return;
  }
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(render, 150);
}

document.addEventListener("focusout", () => {
  if (heldBack) setTimeout(() => { if (!typing()) { heldBack = false; refreshSoon(); } }, 0);
});

function connect() {
  const stream = new EventSource("/api/stream");
  let connected = false;
  stream.addEventListener("hello", () => {
    liveBadge.classList.add("on");
    liveBadge.textContent = "live";
    if (connected) refreshSoon();  // back after a break: batches may have landed meanwhile
    connected = true;
  });
  stream.addEventListener("batch", (event) => {
    const batch = JSON.parse(event.data);
    liveBadge.textContent = `live · batch ${(batch.ts || "").slice(11, 19)}`;
    liveBadge.classList.add("flash");
    setTimeout(() => liveBadge.classList.remove("flash"), 600);
    refreshSoon();
  });
  stream.addEventListener("changed", refreshSoon);
  stream.onerror = () => {
    liveBadge.classList.remove("on");
    liveBadge.textContent = "reconnecting…";
  };
}

window.addEventListener("hashchange", render);
render();
connect();
