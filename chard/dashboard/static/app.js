// chard dashboard: hash-routed views over the JSON API, live by server-sent events.
// Every value from the cluster goes into the page as text (textContent), never as HTML.
"use strict";

const state = { csrf: null, stream: null, timer: null };
const view = document.getElementById("view");

// -- helpers ------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind || "";
  box.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
  if (response.status === 401) { showLogin(); throw new Error("login required"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function act(path, body) {
  try {
    const reply = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
      body: JSON.stringify(body || {}),
    });
    const answer = reply.reply ? JSON.stringify(reply.reply) : "done";
    say(`${path.split("/").slice(-1)[0]}: ${answer}`, "info");
    route();
  } catch (err) {
    say(err.message);
  }
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const secs = (s) => (s === null || s === undefined ? ""
  : s < 0.001 ? `${Math.round(s * 1e6)} µs`
  : s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${Number(s).toFixed(2)} s`);
const badge = (s) => el("span", { class: `state ${s}` }, s);
const link = (href, text) => el("a", { href }, text);

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows.map((cells) => el("tr", {}, cells.map((c) =>
      el("td", {}, c)))) : el("tr", {}, el("td", { colspan: headers.length, class: "muted" },
      "nothing yet"))));
}

// -- charts -------------------------------------------------------------------------
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

async function throughputChart() {
  const data = await api("/api/throughput?span=600&step=10");
  const width = 720, height = 90, gap = 1;
  const most = Math.max(1, ...data.buckets.map((b) => b.succeeded + b.failed));
  const bar = width / data.buckets.length;
  const chart = svg("svg", { width, height, class: "chart", role: "img",
    "aria-label": "tasks finished per 10 seconds" });
  data.buckets.forEach((b, i) => {
    const ok = (b.succeeded / most) * height, bad = (b.failed / most) * height;
    chart.append(svg("rect", { x: i * bar, y: height - ok - bad, width: bar - gap,
      height: bad, class: "bad" }));
    chart.append(svg("rect", { x: i * bar, y: height - ok, width: bar - gap, height: ok,
      class: "ok" }));
  });
  const ended = data.buckets.filter((b) => b.p50 !== null);
  const last = ended[ended.length - 1];
  const total = data.buckets.reduce((n, b) => n + b.succeeded, 0);
  const failed = data.buckets.reduce((n, b) => n + b.failed, 0);
  return [el("h2", {}, "Last 10 minutes"), chart,
    el("p", { class: "muted" }, `${total} succeeded, ${failed} failed (peak ${most} per 10 s)`,
      last ? ` · latest runtimes p50 ${secs(last.p50)}, p90 ${secs(last.p90)}, ` +
        `p99 ${secs(last.p99)}` : "")];
}

// -- views --------------------------------------------------------------------------
async function workersView() {
  const rows = await api("/api/workers");
  return [await throughputChart(), el("h2", {}, `Workers (${rows.length})`), table(
    ["Worker", "Status", "Pool", "Processed", "Failed", "Active", "Queues", "Heartbeat", "Actions"],
    rows.map((w) => [
      el("span", { class: "mono" }, w.hostname), badge(w.status),
      `${w.pool || "?"} × ${w.concurrency ?? "?"}`, w.processed ?? "", w.failed, w.active ?? "",
      (w.queues || []).join(", "),
      w.heartbeat_age === null ? "—" : `${w.heartbeat_age.toFixed(1)}s ago`,
      workerActions(w.hostname),
    ]))];
}

function workerActions(host) {
  const base = `/api/workers/${encodeURIComponent(host)}`;
  const ask = (label) => window.prompt(label);
  return el("div", { class: "actions" },
    el("button", { on: { click: () => act(`${base}/pool_grow`, { n: 1 }) } }, "+1"),
    el("button", { on: { click: () => act(`${base}/pool_shrink`, { n: 1 }) } }, "−1"),
    el("button", { on: { click: () => {
      const max = ask("autoscale max"); const min = ask("autoscale min");
      if (max && min) act(`${base}/autoscale`, { max, min });
    } } }, "autoscale"),
    el("button", { on: { click: () => {
      const task_name = ask("task name"); const rate_limit = ask("rate limit (10/m)");
      if (task_name && rate_limit) act(`${base}/rate_limit`, { task_name, rate_limit });
    } } }, "rate limit"),
    el("button", { on: { click: () => {
      const queue = ask("queue to consume"); if (queue) act(`${base}/add_consumer`, { queue });
    } } }, "add queue"),
    el("button", { on: { click: () => {
      const queue = ask("queue to stop"); if (queue) act(`${base}/cancel_consumer`, { queue });
    } } }, "cancel queue"),
    el("button", { class: "danger", on: { click: () => {
      if (window.confirm(`Shut down ${host}?`)) act(`${base}/shutdown`);
    } } }, "shut down"));
}

async function tasksView(params) {
  const query = new URLSearchParams(params);
  if (!query.get("limit")) query.set("limit", "50");
  const page = await api(`/api/tasks?${query}`);
  const field = (name, placeholder) =>
    el("input", { name, placeholder, value: params.get(name) || "" });
  const states = ["", "PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED"];
  const form = el("form", { class: "filters", on: { submit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams(new FormData(e.target));
    for (const [k, v] of [...next]) if (!v) next.delete(k);
    location.hash = `#/tasks?${next}`;
  } } },
    el("select", { name: "state" }, states.map((s) =>
      el("option", { value: s, selected: params.get("state") === s }, s || "any state"))),
    field("name", "name"), field("worker", "worker"), field("id", "id"),
    field("search", "args contain"), el("button", { type: "submit" }, "Filter"));
  const offset = Number(query.get("offset") || 0);
  const limit = Number(query.get("limit"));
  const pageTo = (n) => { const q = new URLSearchParams(query); q.set("offset", n);
    return `#/tasks?${q}`; };
  const counts = Object.entries(page.counts).map(([s, n]) => `${s} ${n}`).join(" · ");
  const source = page.source === "history" ? "searched in the history" : "in memory";
  const total = page.exact === false ? `at least ${page.total}` : `${page.total}`;
  return [el("h2", {}, `Tasks (${total})`),
    el("p", { class: "muted" }, `${counts} · ${source}`), form,
    table(["Name", "Id", "State", "Args", "Kwargs", "Worker", "Runtime", "Changed"],
      page.tasks.map((t) => [t.name || "?", link(`#/task/${t.id}`, t.id), badge(t.state),
        el("span", { class: "mono" }, t.args || ""), el("span", { class: "mono" }, t.kwargs || ""),
        t.worker || "", secs(t.runtime), when(t.timestamp)])),
    el("div", { class: "pager" },
      offset > 0 ? link(pageTo(Math.max(0, offset - limit)), "← newer") : "",
      `${page.total ? offset + 1 : 0}–${Math.min(offset + limit, page.total)} of ${total}`,
      offset + limit < page.total ? link(pageTo(offset + limit), "older →") : "")];
}

// A task's workflow: boxes laid out by the server (graph.py), drawn here as SVG, every
// name as a text node. A box links to its task; the current one is outlined.
function workflowGraph(g) {
  if (!g || g.nodes.length < 2) return [];
  const at = Object.fromEntries(g.nodes.map((n) => [n.id, n]));
  const { width: w, height: h } = g.box;
  const drawing = svg("svg", { width: g.width, height: g.height, class: "workflow",
    role: "img", "aria-label": `workflow of ${g.nodes.length} tasks` });
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  const defs = svg("defs", {}); defs.append(marker); drawing.append(defs);
  for (const e of g.edges) {
    const a = at[e.from], b = at[e.to];
    const x1 = a.x + w, y1 = a.y + h / 2, x2 = b.x, y2 = b.y + h / 2, mid = (x1 + x2) / 2;
    drawing.append(svg("path", { d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
      class: "edge", "marker-end": "url(#arrow)" }));
  }
  for (const n of g.nodes) {
    const box = svg("a", { href: `#/task/${encodeURIComponent(n.id)}`, class: "node",
      "data-task": n.id });
    box.append(svg("rect", { x: n.x, y: n.y, width: w, height: h, rx: 4,
      class: `box ${n.state}${n.current ? " current" : ""}` }));
    const name = (n.name || "?").split(".").slice(-2).join(".");
    const label = svg("text", { x: n.x + 8, y: n.y + 18, class: "label" });
    label.textContent = name.length > 24 ? `${name.slice(0, 23)}…` : name;
    const sub = svg("text", { x: n.x + 8, y: n.y + 36, class: `sub ${n.state}` });
    sub.textContent = `${n.state} · ${n.id.slice(0, 8)}`;
    const title = svg("title", {}); title.textContent = `${n.name || "?"} ${n.id} ${n.state}`;
    box.append(title, label, sub);
    drawing.append(box);
  }
  return [el("h2", {}, "Workflow"), el("div", { class: "graph" }, drawing),
    g.cut ? el("p", { class: "muted" }, `only the first ${g.nodes.length} tasks are drawn`) : ""];
}

async function taskView(id) {
  const t = await api(`/api/tasks/${encodeURIComponent(id)}`);
  const ref = (other) => (other && other !== t.id ? link(`#/task/${other}`, other) : "—");
  const base = `/api/tasks/${encodeURIComponent(t.id)}`;
  return [el("h2", {}, `${t.name || "task"} `, badge(t.state)),
    el("div", { class: "actions" },
      el("button", { on: { click: () => act(`${base}/revoke`) } }, "revoke"),
      el("button", { class: "danger", on: { click: () => {
        if (window.confirm("Terminate it if running?")) act(`${base}/revoke`, { terminate: true });
      } } }, "terminate"),
      el("button", { on: { click: () => act(`${base}/retry`) } }, "send again")),
    el("dl", {},
      [["Id", t.id], ["Worker", t.worker || ""], ["Args", t.args || ""],
       ["Kwargs", t.kwargs || ""], ["Result", t.result ?? ""], ["Exception", t.exception || ""],
       ["Runtime", secs(t.runtime)], ["Retries", t.retries ?? ""], ["ETA", t.eta || ""]]
        .map(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]),
      el("dt", {}, "Parent"), el("dd", {}, ref(t.parent_id)),
      el("dt", {}, "Root"), el("dd", {}, ref(t.root_id)),
      el("dt", {}, "Children"), el("dd", {}, t.children.length
        ? t.children.map((c) => el("div", {}, link(`#/task/${c}`, c))) : "—")),
    workflowGraph(t.graph),
    t.traceback ? [el("h2", {}, "Traceback"), el("pre", {}, t.traceback)] : [],
    el("h2", {}, "Timeline"),
    table(["Event", "When", "After the first"], t.timeline.map((e) => [e.event, when(e.timestamp),
      secs(e.timestamp - t.timeline[0].timestamp)]))];
}

async function queuesView() {
  const q = await api("/api/queues");
  return [el("h2", {}, "Queues"),
    table(["Queue", "Waiting"], q.queues.map((x) => [x.name, x.length])),
    el("h2", {}, `Dead letters (${q.dead_letters.length})`),
    q.dead_letters.length ? el("button", { on: { click: () =>
      act("/api/dead-letters/redrive", { ids: null }) } }, "re-drive all") : "",
    table(["Id", "Queue", "Task", "Task id", "Age", "Deliveries", "Reason", ""],
      q.dead_letters.map((d) => [el("span", { class: "mono" }, d.id), d.queue, d.task,
        d.task_id, d.age, d.deliveries, d.reason,
        el("button", { on: { click: () => act("/api/dead-letters/redrive", { ids: [d.id] }) } },
          "re-drive")])),
    el("h2", {}, `Delayed (${q.delayed.length})`),
    table(["Queue", "Task", "Task id", "Due", "Priority"],
      q.delayed.map((d) => [d.queue, d.task, link(`#/task/${d.task_id}`, d.task_id),
        when(d.eta), d.priority]))];
}

async function beatView() {
  const b = await api("/api/beat");
  const leader = b.leader ? `leader: ${b.leader.owner} (lease ${b.leader.expires_in.toFixed(1)}s)`
    : "no beat leads now";
  const base = (name) => `/api/beat/${encodeURIComponent(name)}`;
  return [el("h2", {}, `Beat (${b.entries.length} entries)`), el("p", { class: "muted" }, leader),
    b.errors.map((e) => el("p", { class: "FAILURE" }, e)),
    table(["Name", "Task", "Schedule", "Enabled", "Origin", "Last run", "Next run", "Runs", ""],
      b.entries.map((e) => [e.name, e.task, el("span", { class: "mono" }, e.schedule),
        e.enabled ? "yes" : "no", e.origin, e.last_run_at || "never", e.next_run_at || "",
        e.total_run_count,
        el("button", { on: { click: () =>
          act(`${base(e.name)}/${e.enabled ? "disable" : "enable"}`) } },
          e.enabled ? "disable" : "enable")]))];
}

function showLogin() {
  view.replaceChildren(el("form", { class: "login", on: { submit: async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(e.target));
    const response = await fetch("/api/login", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
    if (response.ok) { say(""); start(); } else say("Wrong token or password.");
  } } },
    el("h2", {}, "Log in"), el("input", { name: "token", type: "password", placeholder: "token" }),
    el("p", { class: "muted" }, "or"), el("input", { name: "user", placeholder: "user" }),
    el("input", { name: "password", type: "password", placeholder: "password" }),
    el("button", { type: "submit" }, "Log in")));
}

// -- routing and live updates -------------------------------------------------------
async function route() {
  const [path, query] = (location.hash.slice(1) || "/workers").split("?");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "workers";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (name === "task" ? "tasks" : name));
  }
  try {
    let content;
    if (name === "task") content = await taskView(decodeURIComponent(parts[1] || ""));
    else if (name === "tasks") content = await tasksView(new URLSearchParams(query || ""));
    else if (name === "queues") content = await queuesView();
    else if (name === "beat") content = await beatView();
    else content = await workersView();
    view.replaceChildren(...[content].flat(3));
  } catch (err) {
    if (err.message !== "login required") say(err.message);
  }
}

function listen() {
  if (state.stream) state.stream.close();
  const live = document.getElementById("live");
  state.stream = new EventSource("/api/stream");
  state.stream.onopen = () => { live.textContent = "live"; live.className = "on"; };
  state.stream.onerror = () => { live.textContent = "reconnecting"; live.className = "muted"; };
  state.stream.addEventListener("update", (e) => {
    const o = JSON.parse(e.data);
    document.getElementById("summary").textContent =
      `${o.workers_online} worker(s) online · ${o.tasks_kept} task(s) · ${o.rate.toFixed(1)}/s`;
    clearTimeout(state.timer);  // at most one redraw a second, and not while typing
    state.timer = setTimeout(() => {
      if (!document.activeElement || !["INPUT", "SELECT"].includes(document.activeElement.tagName))
        route();
    }, 1000);
  });
}

async function start() {
  try {
    state.csrf = (await api("/api/session")).csrf;
  } catch (err) {
    return;
  }
  // ?live=0: a still page (no stream), for printing, screenshots or a slow link
  if (new URLSearchParams(location.search).get("live") !== "0") listen();
  else document.getElementById("live").textContent = "paused (live=0)";
  route();
}

window.addEventListener("hashchange", () => { say(""); route(); });
start();
