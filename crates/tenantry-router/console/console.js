// The operator console: one ES module, no framework, no build step.
//
// Rules it keeps: every value reaches the page through textContent (never as HTML);
// the admin token lives in sessionStorage only and travels as an Authorization header,
// never in a URL; a 401 or 403 signs out.

const TOKEN_KEY = "tenantry.admin_token";
const API = "/admin/v1";
const STATES = ["requested", "creating", "ready", "suspended", "deleting", "deleted", "failed"];

const $ = (id) => document.getElementById(id);

// ---- building the page, as text only ----

function el(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
  if (opts.cls) node.className = opts.cls;
  if (opts.title) node.title = String(opts.title);
  if (opts.value !== undefined) node.value = String(opts.value);
  for (const [k, v] of Object.entries(opts.data || {})) node.dataset[k] = String(v);
  for (const child of children) if (child) node.append(child);
  return node;
}

function cell(value, cls) {
  return el("td", { text: value === null || value === undefined ? "—" : value, cls });
}

function badge(state) {
  return el("td", {}, [el("span", { text: state, cls: `state state-${state}` })]);
}

function clear(node) {
  node.replaceChildren();
}

function money(cents) {
  return `$${(Number(cents) / 100).toFixed(2)}`;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19);
}

function notice(text, bad = false) {
  const n = $("notice");
  n.textContent = text;
  n.classList.toggle("bad", bad);
  n.hidden = !text;
}

// ---- the token and the API ----

class SignedOut extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (response.status === 401 || response.status === 403) {
    const message = await errorText(response);
    signOut(`Signed out: ${message}`);
    throw new SignedOut(message);
  }
  if (raw) return response;
  if (!response.ok) {
    const e = new Error(await errorText(response));
    e.status = response.status;
    throw e;
  }
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body?.error?.message || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ---- signing in and out ----

function signedIn() {
  const yes = Boolean(token());
  $("sign-in").hidden = yes;
  $("nav").hidden = !yes;
  $("sign-out").hidden = !yes;
  return yes;
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  stopPolling();
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  notice("");
  $("token").value = "";
  $("sign-in-error").textContent = message;
  signedIn();
}

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("sign-in-error").textContent = "";
  try {
    await api(`${API}/fleet`);
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("sign-in-error").textContent = `Cannot sign in: ${e.message}`;
    signedIn();
    return;
  }
  signedIn();
  route();
}

// ---- views ----

let poller = null;

function stopPolling() {
  if (poller) clearInterval(poller);
  poller = null;
}

const views = {
  fleet: showFleet,
  tenants: showTenants,
  migrations: showMigrations,
  operations: showOperations,
};

async function route() {
  if (!signedIn()) return;
  stopPolling();
  notice("");
  const name = views[location.hash.slice(1)] ? location.hash.slice(1) : "fleet";
  for (const [v] of Object.entries(views)) {
    $(`view-${v}`).hidden = v !== name;
    $(`nav-${v}`).classList.toggle("active", v === name);
  }
  try {
    await views[name]();
  } catch (e) {
    if (!(e instanceof SignedOut)) notice(e.message, true);
  }
}

// Fleet

async function showFleet() {
  const f = await api(`${API}/fleet`);
  $("fleet-revenue").textContent = money(f.monthly_revenue_cents);
  $("fleet-routers").textContent = f.routers;
  let live = 0;
  const tenants = $("fleet-tenants").tBodies[0];
  clear(tenants);
  for (const [state, plans] of Object.entries(f.tenants)) {
    for (const [plan, n] of Object.entries(plans)) {
      if (state !== "deleted" && state !== "failed") live += n;
      tenants.append(el("tr", {}, [badge(state), cell(plan), cell(n, "num")]));
    }
  }
  $("fleet-live").textContent = live;
  const servers = $("fleet-servers").tBodies[0];
  clear(servers);
  for (const s of f.servers) {
    servers.append(
      el("tr", {}, [
        cell(s.name),
        badge(s.state),
        cell(`${s.tenants} / ${s.capacity}`, "num"),
        cell(s.max_connections, "num"),
        cell(s.budget ?? "not used yet", "num"),
        cell(s.connections_in_use ?? 0, "num"),
        cell(s.waiting ?? 0, "num"),
        cell(`logical replication: ${s.logical_replication}`),
      ]),
    );
  }
  const plans = $("fleet-plans").tBodies[0];
  clear(plans);
  for (const p of f.revenue) {
    plans.append(
      el("tr", {}, [cell(p.plan), cell(money(p.price_cents), "num"), cell(p.ready_tenants, "num"), cell(money(p.monthly_cents), "num")]),
    );
  }
  fleetCache = f;
}

let fleetCache = null;

// Tenants

const tenantsState = { cursor: null, plans: [] };

function period() {
  return new Date().toISOString().slice(0, 7);
}

async function fillTenantFilters() {
  if (!fleetCache) fleetCache = await api(`${API}/fleet`);
  const fill = (select, values) => {
    if (select.options.length > 1) return;
    for (const v of values) select.append(el("option", { text: v, value: v }));
  };
  fill($("filter-state"), STATES);
  tenantsState.plans = fleetCache.revenue.map((p) => p.plan);
  fill($("filter-plan"), tenantsState.plans);
  fill($("filter-server"), fleetCache.servers.map((s) => s.name));
}

async function showTenants(more = false) {
  await fillTenantFilters();
  const body = $("tenants").tBodies[0];
  if (!more) {
    clear(body);
    tenantsState.cursor = null;
  }
  const page = await api(`${API}/fleet/tenants${query({
    q: $("filter-q").value.trim(),
    state: $("filter-state").value,
    plan: $("filter-plan").value,
    server: $("filter-server").value,
    schema_version: $("filter-version").value,
    cursor: tenantsState.cursor,
  })}`);
  $("usage-source").textContent =
    `${period()}, as the routers count them (added to the catalog every few seconds)`;
  for (const t of page.items) body.append(tenantRow(t));
  tenantsState.cursor = page.next_cursor;
  $("tenants-more").hidden = !page.next_cursor;
}

function tenantRow(t) {
  const actions = el("div", { cls: "actions" });
  if (t.state === "ready") actions.append(button("Suspend", () => lifecycle(t.slug, "suspend"), "suspend"));
  if (t.state === "suspended") actions.append(button("Resume", () => lifecycle(t.slug, "resume"), "resume"));
  if (t.state === "ready" || t.state === "suspended") {
    const select = el("select", { data: { action: "plan" } });
    for (const p of tenantsState.plans) {
      const o = el("option", { text: p, value: p });
      o.selected = p === t.plan;
      select.append(o);
    }
    actions.append(select, button("Change plan", () => changePlan(t.slug, select.value), "change-plan"));
    actions.append(button("Export", () => exportTenant(t.slug), "export"));
  }
  return el("tr", { data: { slug: t.slug } }, [
    cell(t.slug, "mono"),
    badge(t.state),
    cell(t.plan),
    cell(t.server),
    cell(t.schema_version, "num"),
    el("td", { text: t.tasks_this_month, cls: "num", data: { usage: "tasks" } }),
    el("td", { text: money(t.cost_cents_this_month), cls: "num", data: { usage: "cost" } }),
    el("td", {}, [actions]),
  ]);
}

function button(text, onClick, action) {
  const b = el("button", { text, data: { action } });
  b.type = "button";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
    } catch (e) {
      if (!(e instanceof SignedOut)) notice(e.message, true);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

async function lifecycle(slug, action) {
  const t = await api(`${API}/tenants/${encodeURIComponent(slug)}/${action}`, { method: "POST" });
  await showTenants();
  notice(`${t.slug} is ${t.state}.`);
}

async function changePlan(slug, plan) {
  const t = await api(`${API}/tenants/${encodeURIComponent(slug)}`, { method: "PATCH", body: { plan } });
  await showTenants();
  notice(`${t.slug} is on plan ${t.plan}.`);
}

// The archive is fetched with the token in its header, then handed to the browser as
// a Blob: the token never goes into a link.
async function exportTenant(slug) {
  notice(`Exporting ${slug}…`);
  const response = await api(`${API}/tenants/${encodeURIComponent(slug)}/export`, { raw: true });
  if (!response.ok) throw new Error(await errorText(response));
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = el("a");
  a.href = url;
  a.download = `${slug}.dump`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  notice(`Exported ${slug}: ${blob.size} bytes.`);
}

// Migrations

const runsState = { cursor: null, selected: null, pinned: false, extended: false, resultsCursor: null };

async function showMigrations(more = false) {
  const body = $("runs").tBodies[0];
  const page = await api(`${API}/migration-runs${query({ cursor: more ? runsState.cursor : null, limit: 20 })}`);
  runsState.extended = more;
  if (!more) clear(body);
  for (const r of page.items) {
    const row = el("tr", { cls: "clickable", data: { run: r.id, state: r.state } }, [
      cell(r.id.slice(0, 8) + (r.dry_run ? " (dry run)" : ""), "mono"),
      badge(r.state),
      cell(when(r.started_at)),
      cell(when(r.finished_at)),
      cell(r.tenants.pending, "num"),
      cell(r.tenants.running, "num"),
      cell(r.tenants.ok, "num"),
      cell(r.tenants.failed, "num"),
      cell(r.tenants.skipped, "num"),
    ]);
    row.classList.toggle("selected", r.id === runsState.selected);
    row.addEventListener("click", () => {
      runsState.selected = r.id;
      runsState.pinned = true;
      for (const other of body.rows) other.classList.toggle("selected", other === row);
      showRun(false).catch((e) => e instanceof SignedOut || notice(e.message, true));
    });
    body.append(row);
  }
  runsState.cursor = page.next_cursor;
  $("runs-more").hidden = !page.next_cursor;
  if (more) return;
  // Unless the operator picked one, the run shown is the one in progress, else the latest.
  if (!runsState.pinned && page.items.length) {
    const running = page.items.find((r) => r.state === "running");
    runsState.selected = (running || page.items[0]).id;
    for (const row of body.rows) row.classList.toggle("selected", row.dataset.run === runsState.selected);
  }
  if (runsState.selected) await showRun(false);
  // Runs are followed live, once a second, while this view is shown.
  if (!poller) poller = setInterval(() => refreshRuns(), 1000);
}

let refreshing = false;

async function refreshRuns() {
  if ($("view-migrations").hidden) return stopPolling();
  // A page further down (More) stays as it is; only the first page is followed.
  if (refreshing || runsState.extended) return;
  refreshing = true;
  try {
    await showMigrations(false);
  } catch (e) {
    if (e instanceof SignedOut) stopPolling();
  } finally {
    refreshing = false;
  }
}

async function showRun(more) {
  const id = runsState.selected;
  if (!id) return;
  const run = await api(`${API}/migration-runs/${encodeURIComponent(id)}${query({ cursor: more ? runsState.resultsCursor : null })}`);
  $("run-detail").hidden = false;
  $("run-id").textContent = run.id;
  $("run-state").textContent = run.state;
  $("run-state").className = `state state-${run.state}`;
  const body = $("run-tenants").tBodies[0];
  if (!more) clear(body);
  for (const t of run.results.items) {
    body.append(
      el("tr", { data: { slug: t.slug } }, [
        cell(t.slug, "mono"),
        badge(t.status),
        cell(t.from_version, "num"),
        cell(t.to_version, "num"),
        cell(t.duration_ms, "num"),
        cell(t.error, "wrap"),
      ]),
    );
  }
  runsState.resultsCursor = run.results.next_cursor;
  $("run-tenants-more").hidden = !run.results.next_cursor;
}

// Operations

const opsState = { cursor: null };

async function showOperations(more = false) {
  const body = $("operations").tBodies[0];
  if (!more) {
    clear(body);
    opsState.cursor = null;
  }
  const page = await api(`${API}/operations${query({
    status: $("filter-op-status").value,
    tenant: $("filter-op-tenant").value.trim(),
    cursor: opsState.cursor,
  })}`);
  for (const o of page.items) {
    body.append(
      el("tr", {}, [
        cell(o.id, "num"),
        cell(o.tenant, "mono"),
        cell(o.server),
        cell(o.kind),
        cell(o.step),
        badge(o.status),
        cell(when(o.started_at)),
        cell(when(o.finished_at)),
        cell(o.error, "wrap"),
      ]),
    );
  }
  opsState.cursor = page.next_cursor;
  $("operations-more").hidden = !page.next_cursor;
}

// ---- wiring ----

function guard(fn) {
  return (event) => {
    event?.preventDefault?.();
    fn().catch((e) => e instanceof SignedOut || notice(e.message, true));
  };
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut("Signed out."));
$("tenant-filters").addEventListener("submit", guard(() => showTenants(false)));
$("tenants-more").addEventListener("click", guard(() => showTenants(true)));
$("runs-more").addEventListener("click", guard(() => showMigrations(true)));
$("run-tenants-more").addEventListener("click", guard(() => showRun(true)));
$("operation-filters").addEventListener("submit", guard(() => showOperations(false)));
$("operations-more").addEventListener("click", guard(() => showOperations(true)));
window.addEventListener("hashchange", route);
route();
