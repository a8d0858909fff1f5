// West site web UI: the few live parts of server-rendered pages. Plain JavaScript, no
// libraries, nothing loaded from outside the site.
//
// - times: <time data-us> elements are shown in the viewer's timezone, UTC on hover;
// - the header's hub dot polls /health, its alarm count the alarms API;
// - charts (figure.chart) draw a resource's series as inline SVG from the data API and poll
//   it for new points; the same charts draw a paired connector's rate history (several
//   series of one answer, data-series); the device page's latest values and charts follow
//   the live stream (Server-Sent Events), its pending badge polls the device API;
// - copy buttons, confirmation dialogs for destructive forms, pairing progress and countdown;
// - paired connectors: the peer's device list and a device's Remote view, looked up live.
"use strict";

(function () {
  const POLL_MS = 5000;
  const PAGE = 10000;
  const MAX_POINTS = 100000;
  const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const pad = (n) => String(n).padStart(2, "0");

  // ---- Times ---------------------------------------------------------------------------

  function localText(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function utcText(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function relText(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 10) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function paintTime(el) {
    const ms = Number(el.dataset.us) / 1000;
    if (!Number.isFinite(ms)) return;
    el.textContent = el.hasAttribute("data-rel") ? relText(ms) : localText(ms);
    el.title = `${localText(ms)} (your time) · ${utcText(ms)}`;
  }

  function timeHtml(us, rel) {
    const el = document.createElement("time");
    el.dataset.us = String(us);
    if (rel) el.setAttribute("data-rel", "");
    el.dateTime = new Date(us / 1000).toISOString();
    paintTime(el);
    return el;
  }

  function paintTimes(root) { $$("time[data-us]", root).forEach(paintTime); }

  // ---- Values --------------------------------------------------------------------------

  function valueText(v, format, unit) {
    if (v === null || v === undefined) return "—";
    let s = typeof v === "object" ? JSON.stringify(v) : String(v);
    if ((format === "number" || format === "integer") && unit) s += " " + unit;
    return s;
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("signed out");
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error(body.message || `${r.status} ${r.statusText}`);
      e.status = r.status;
      throw e;
    }
    return body;
  }

  // ---- Header: hub link ----------------------------------------------------------------

  const HUB_CLASS = { connected: "ok", connecting: "warn", reconnecting: "warn", refused: "bad", disabled: "off" };

  async function pollHealth() {
    const dot = $("#hub-dot"), words = $("#hub-words");
    if (!dot || !words) return;
    let cls = "bad", text = "Site unreachable", h = null;
    try {
      const r = await fetch("/health", { cache: "no-store" });
      h = await r.json();
      const state = h.hub && h.hub.link && h.hub.link.state;
      cls = h.hub && h.hub.connected ? "ok" : (HUB_CLASS[state] || "off");
      text = (h.hub && h.hub.message) || (h.hub && h.hub.connected ? "Hub: connected" : "Hub: not connected");
    } catch (_) { /* the site itself is unreachable: say so */ }
    dot.className = "dot " + cls;
    words.textContent = text;
    const full = $("#storage-full");
    if (full) full.hidden = !(h && h.storage && h.storage.full);
  }

  // ---- Header: active alarms -------------------------------------------------------------

  async function pollAlarms() {
    const badge = $("#alarm-badge"), count = $("#alarm-count");
    if (!badge || !count) return;
    try {
      const a = await getJson("/api/v1/alarms?state=active&limit=1");
      count.textContent = String(a.active);
      badge.classList.toggle("on", a.active > 0);
    } catch (_) { /* the site is unreachable: the hub dot says so */ }
  }

  // ---- Copy buttons --------------------------------------------------------------------

  async function copy(btn) {
    const text = btn.dataset.copy || "";
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const ta = document.createElement("textarea");
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
    }
    btn.classList.add("done");
    btn.title = "Copied";
    const label = btn.classList.contains("labelled") ? btn.lastChild : null;
    const before = label ? label.textContent : "";
    if (label) label.textContent = "Copied";
    setTimeout(() => {
      btn.classList.remove("done");
      btn.title = "Copy to the clipboard";
      if (label) label.textContent = before;
    }, 1500);
  }

  // ---- Confirmation of destructive actions ----------------------------------------------

  function confirmSubmit(e) {
    const form = e.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.dataset.progress !== undefined) showProgress(form);
    if (form.dataset.confirm === undefined || form.dataset.confirmed) return;
    const dialog = $("#confirm");
    if (!dialog || !dialog.showModal) { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); return; }
    e.preventDefault();
    $("#confirm-title").textContent = form.dataset.confirmTitle || "Are you sure?";
    $("#confirm-text").textContent = form.dataset.confirm;
    $("#confirm-ok").textContent = form.dataset.confirmOk || "Confirm";
    // The way back never reads like the action ("Cancel" beside "Cancel pairing").
    $("#confirm-cancel").textContent = form.dataset.confirmCancel || "Go back";
    dialog.returnValue = "";
    const submitter = e.submitter;
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") return;
      form.dataset.confirmed = "1";
      if (form.requestSubmit) form.requestSubmit(submitter || undefined); else form.submit();
    }, { once: true });
    dialog.showModal();
  }

  function showProgress(form) {
    const p = $("#progress", form);
    if (!p) return;
    const target = $("#target-toggle", form);
    const site = ($("#remote-site", form) || {}).value;
    p.textContent = target && target.checked ? `Pairing with ${site || "the remote site"}…` : "Creating…";
    p.hidden = false;
    const btn = $("button[type=submit]", form);
    if (btn) setTimeout(() => { btn.disabled = true; }, 0);
  }

  // ---- Pairing countdown -----------------------------------------------------------------

  function tickCountdown() {
    $$("[data-expires-us]").forEach((el) => {
      const end = Number(el.dataset.expiresUs) / 1000;
      if (!end) return;
      const left = Math.max(0, Math.round((end - Date.now()) / 1000));
      el.textContent = left > 0 ? `${pad(Math.floor(left / 60))}:${pad(left % 60)}` : "Pairing expired";
    });
  }

  // A page waiting for a pairing reloads when the connector's Remote-Sync state changes
  // (paired by the Target, expired, or cancelled elsewhere), and a paired Source waiting for
  // its Target's first session reloads once the pairing is confirmed.
  async function pollSyncState() {
    const host = $("[data-sync-src]");
    if (!host || document.hidden) return;
    try {
      const rs = await getJson(host.dataset.syncSrc);
      const confirmed = host.dataset.syncConfirmed;
      if (rs.state !== host.dataset.syncState ||
          (confirmed !== undefined && rs.state === "paired" && String(rs.confirmed) !== confirmed)) {
        location.reload();
      }
    } catch (_) { /* the header's dot already says the site is unreachable */ }
  }

  // Parts marked data-live-refresh re-render from the server every few milliseconds given:
  // the page is fetched again and only those elements are swapped, so the figures are
  // formatted in one place (the template) and nothing else on the page moves. Parts with the
  // same period share one fetch.
  function setupLiveParts() {
    const groups = new Map();
    $$("[data-live-refresh]").forEach((el) => {
      if (!el.id) return;
      const every = Number(el.dataset.liveRefresh) || 5000;
      if (!groups.has(every)) groups.set(every, []);
      groups.get(every).push(el);
    });
    groups.forEach((els, every) => {
      setInterval(async () => {
        if (document.hidden) return;
        try {
          const resp = await fetch(location.href, { credentials: "same-origin", headers: { "X-West-Refresh": "1" } });
          if (!resp.ok) return;
          const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
          for (const el of els) {
            const fresh = doc.getElementById(el.id);
            if (fresh) {
              el.innerHTML = fresh.innerHTML;
              paintTimes(el);
            }
          }
        } catch (_) { /* the header's dot already says the site is unreachable */ }
      }, every);
    });
  }

  // ---- Latest values of a device -------------------------------------------------------

  async function pollDevice() {
    const host = $("[data-device-src]");
    if (!host || document.hidden) return;
    try {
      const changed = $("#device-changed");
      let d;
      try {
        d = await getJson(host.dataset.deviceSrc);
      } catch (e) {
        if (e.status === 404 && changed) {
          // Deleted meanwhile (on the peer, or in another window).
          $("#device-changed-text").textContent = "This device was deleted since the page was shown.";
          changed.hidden = false;
        }
        return;
      }
      // Tags, permissions, state or configuration changed since the page was rendered and
      // the live stream's `device` event did not say so (it was down, say): rewrite them.
      if (host.dataset.managed) {
        const now = JSON.stringify([d.tags, d.permissions, d.state, d.config]);
        if (now !== host.dataset.managed) refreshDevice();
      }
      for (const [name, p] of Object.entries(d.values || {})) {
        $$(`[data-value-of="${name}"]`).forEach((el) => {
          el.textContent = valueText(p.v, el.dataset.format, el.dataset.unit);
        });
        $$(`[data-time-of="${name}"]`).forEach((el) => { el.replaceChildren(timeHtml(p.t, false)); });
      }
      const seen = $("#last-seen");
      if (seen && d.last_seen) seen.replaceChildren(timeHtml(d.last_seen, true));
      // Paired connectors: the pending badge stays while the peer has not applied this
      // site's latest change of the device.
      // While the Remote view reaches the peer, it decides the badge (below), so that the
      // two never disagree.
      const pending = $("#device-pending");
      if (pending && d.sync && peerPending === null) pending.hidden = !d.sync.pending;
    } catch (_) { /* the next poll tries again; charts show errors */ }
  }

  // ---- A device page that stays live ---------------------------------------------------
  // State, tags, permissions, configuration and the Changes list are server-rendered forms.
  // When the device changes (a `device` event on the live stream, or the poll above finding
  // its fields differ from the page's), the page asks the server for itself again and swaps
  // in each `data-live-section`, except one the operator is typing in (focused, or edited
  // and not submitted): that one is left as it is, nothing typed is lost, and the banner
  // offers a reload.

  // Whether the pending badge shows, as the Remote view last decided it (null: the Remote
  // view is not on the page or cannot reach the peer, and the device API decides).
  let peerPending = null;
  let refreshing = null;

  function editing(section) {
    const focused = document.activeElement;
    if (focused && section.contains(focused) && focused.matches("input, select, textarea")) return true;
    return $$("input:not([type=hidden]), textarea", section).some((i) => i.value !== i.defaultValue) ||
      $$("select", section).some((sel) => {
        // A select with no option marked selected starts at its first.
        const start = Array.from(sel.options).findIndex((o) => o.defaultSelected);
        return sel.selectedIndex !== Math.max(start, 0);
      });
  }

  function refreshDevice() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      const host = $("[data-device-src]");
      // The header leaves a notice a form's redirect just set for the page it goes to.
      const res = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html", "X-West-Refresh": "1" } });
      if (!host || !res.ok) return; // deleted: the poll and the stream say so
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = $("[data-device-src]", doc);
      if (!fresh) return;
      let kept = false;
      for (const next of $$("[data-live-section]", doc)) {
        const cur = $(`[data-live-section="${next.dataset.liveSection}"]`);
        if (!cur) continue;
        if (editing(cur)) { kept = true; continue; }
        cur.replaceWith(next);
        paintTimes(next);
      }
      const pending = $("#device-pending");
      if (pending && peerPending !== null) pending.hidden = !peerPending;
      if (!kept) host.dataset.managed = fresh.dataset.managed;
      const changed = $("#device-changed");
      if (changed) changed.hidden = !kept;
      host.dataset.refreshed = String((Number(host.dataset.refreshed) || 0) + 1);
    })().catch(() => { /* the next poll tries again */ }).finally(() => { refreshing = null; });
    return refreshing;
  }

  function onDeviceEvent(e) {
    let changes;
    try { changes = JSON.parse(e.data).changes || []; } catch (_) { return; }
    if (changes.some((c) => c.action === "deleted")) {
      const changed = $("#device-changed");
      if (changed) {
        $("#device-changed-text").textContent = "This device was deleted since the page was shown.";
        changed.hidden = false;
      }
      return;
    }
    refreshDevice();
    if ($("[data-remote-device]")) pollRemoteDevice();
  }

  // ---- Charts ----------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  }

  function fmtNum(x, step) {
    const digits = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step)));
    return x.toFixed(digits);
  }

  const TIME_STEPS = [60e3, 5 * 60e3, 10 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 3 * 3600e3,
    6 * 3600e3, 12 * 3600e3, 86400e3, 2 * 86400e3, 7 * 86400e3];

  function timeTicks(t0, t1, maxTicks) {
    const step = TIME_STEPS.find((s) => (t1 - t0) / s <= maxTicks) || TIME_STEPS[TIME_STEPS.length - 1];
    const off = -new Date(t0).getTimezoneOffset() * 60e3;
    const ticks = [];
    for (let t = Math.ceil((t0 + off) / step) * step - off; t <= t1; t += step) ticks.push(t);
    const label = (t) => {
      const d = new Date(t);
      const day = `${MONTHS[d.getMonth()]} ${d.getDate()}`;
      if (step >= 86400e3) return day;
      if (d.getHours() === 0 && d.getMinutes() === 0 && t1 - t0 > 86400e3) return day;
      return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    };
    return ticks.map((t) => ({ t, label: label(t) }));
  }

  // A chart of one answer's list of timed items (`t` in µs): by default a resource's points
  // (`points`, the value in `v`); with data-list and data-series="key:label,…" several
  // values of each item, one line each (the first in the accent colour, the others neutral),
  // as the rate history of a paired connector.
  class Chart {
    constructor(fig) {
      this.fig = fig;
      this.svg = $("svg.plot", fig);
      this.src = fig.dataset.src;
      this.list = fig.dataset.list || "points";
      this.noun = fig.dataset.noun || "point";
      this.series = (fig.dataset.series || "").split(",").filter(Boolean).map((s) => {
        const [key, label] = s.split(":");
        return { key, label: label || key };
      });
      if (!this.series.length) this.series = [{ key: "v", label: "" }];
      this.format = fig.dataset.format;
      this.unit = fig.dataset.unit || "";
      // Quantities that cannot be negative (rates, a backlog) keep zero on the axis.
      this.fromZero = fig.dataset.fromZero !== undefined;
      this.range = fig.dataset.range in RANGES ? fig.dataset.range : "1h";
      this.status = $(".chart-status", fig);
      this.table = fig.dataset.table ? document.getElementById(fig.dataset.table) : null;
      this.points = [];
      this.truncated = false;
      // Charts of a device's resource ask the server to downsample (data-buckets): a dense
      // range comes as min/max buckets, about one per pixel column. They can also show a
      // window of their own (zoom, custom range) instead of "the last N hours".
      this.drawn = fig.dataset.buckets !== undefined;
      this.window = null;
      this.bucketed = 0;
      this.polls = 0;
      this.gen = 0;
      this.busy = false;
      if (this.svg) {
        new ResizeObserver(() => this.draw()).observe(this.svg);
        this.svg.addEventListener("mousemove", (e) => { this.dragMove(e); this.hover(e); });
        this.svg.addEventListener("mouseleave", () => this.unhover());
        if (this.drawn) {
          this.svg.addEventListener("mousedown", (e) => this.dragStart(e));
          window.addEventListener("mouseup", (e) => this.dragEnd(e));
        }
      }
    }

    numeric(v) {
      if (typeof v === "boolean") return v ? 1 : 0;
      return typeof v === "number" ? v : NaN;
    }

    async fetchSince(sinceUs, gen) {
      const out = [];
      let cursor = null, truncated = false;
      for (;;) {
        const u = new URL(this.src, location.origin);
        u.searchParams.set("since", String(Math.max(0, Math.floor(sinceUs))));
        u.searchParams.set("order", "asc");
        u.searchParams.set("limit", String(PAGE));
        if (cursor) u.searchParams.set("cursor", cursor);
        const body = await getJson(u);
        if (gen !== this.gen) return null;
        for (const p of body[this.list] || []) out.push(p);
        if (!body.next) break;
        if (out.length >= MAX_POINTS) { truncated = true; break; }
        cursor = body.next;
      }
      return { points: out, truncated };
    }

    setRange(r) {
      if (!(r in RANGES)) return;
      this.range = r;
      this.window = null;
      this.fig.dataset.range = r;
      this.reload();
    }

    // The time span shown, in ms: the window when zoomed or chosen, else the last range.
    span() {
      if (this.window) return this.window;
      const t1 = Date.now();
      return [t1 - RANGES[this.range], t1];
    }

    setWindow(w) {
      this.window = w;
      this.reload();
    }

    // Points, or buckets of a dense range, over the span: one request.
    async fetchDrawn(gen) {
      const [t0, t1] = this.span();
      const u = new URL(this.src, location.origin);
      u.searchParams.set("since", String(Math.max(0, Math.floor(t0 * 1000))));
      u.searchParams.set("until", String(Math.ceil(t1 * 1000) + 1));
      const cols = Math.max(100, Math.min(1000, Math.floor((this.svg && this.svg.clientWidth) || 600)));
      u.searchParams.set("buckets", String(cols));
      const body = await getJson(u);
      if (gen !== this.gen) return null;
      if (body.points) return { points: body.points, buckets: 0, total: body.points.length };
      // A bucket is drawn as its first point, its least and greatest values at its middle
      // (in the order that keeps the line's shape) and its last point.
      const out = [];
      let total = 0;
      for (const b of body.buckets || []) {
        total += b.n;
        const mid = Math.floor((b.from + b.until) / 2);
        const lowFirst = b.first.v >= b.last.v;
        const ext = lowFirst ? [b.min, b.max] : [b.max, b.min];
        out.push({ t: b.first.t, v: b.first.v });
        if (b.n > 2) out.push({ t: mid, v: ext[0] }, { t: mid, v: ext[1] });
        if (b.n > 1) out.push({ t: b.last.t, v: b.last.v });
      }
      return { points: out, buckets: (body.buckets || []).length, total };
    }

    // Zoom by dragging across the chart: the span under the drag becomes every chart's
    // window on this page.
    dragStart(e) {
      if (!this.scale || e.button !== 0) return;
      const r = this.svg.getBoundingClientRect();
      this.drag = { x0: e.clientX - r.left, rect: null };
      e.preventDefault();
    }

    dragMove(e) {
      if (!this.drag || !this.scale) return;
      const r = this.svg.getBoundingClientRect();
      const x = e.clientX - r.left, { m } = this.scale;
      if (!this.drag.rect) this.drag.rect = el("rect", { class: "zoom-sel", y: m.t, height: Math.max(0, this.svg.clientHeight - m.t - m.b) }, this.svg);
      this.drag.rect.setAttribute("x", String(Math.min(x, this.drag.x0)));
      this.drag.rect.setAttribute("width", String(Math.abs(x - this.drag.x0)));
    }

    dragEnd(e) {
      const drag = this.drag;
      this.drag = null;
      if (!drag) return;
      if (drag.rect) drag.rect.remove();
      const r = this.svg.getBoundingClientRect();
      const x1 = e.clientX - r.left;
      if (Math.abs(x1 - drag.x0) < 5 || !this.scale) return;
      const { t0, t1, m, pw } = this.scale;
      const at = (x) => t0 + ((Math.min(Math.max(x, m.l), m.l + pw) - m.l) / pw) * (t1 - t0);
      const a = at(Math.min(drag.x0, x1)), b = at(Math.max(drag.x0, x1));
      if (b - a >= 1000) setWindow([a, b]);
    }

    async reload() {
      const gen = ++this.gen;
      this.busy = true;
      try {
        const got = this.drawn ? await this.fetchDrawn(gen) : await this.fetchSince((Date.now() - RANGES[this.range]) * 1000, gen);
        if (!got) return;
        this.points = got.points;
        this.truncated = !!got.truncated;
        this.bucketed = got.buckets || 0;
        this.total = got.total;
        if (this.bucketed && this.table) await this.fetchRecent(gen);
        this.error = null;
      } catch (e) {
        this.error = e.message;
      } finally {
        if (gen === this.gen) { this.busy = false; this.draw(); }
      }
    }

    // The newest points of the span, for the table under a bucketed chart.
    async fetchRecent(gen) {
      const [t0, t1] = this.span();
      const u = new URL(this.src, location.origin);
      u.searchParams.set("since", String(Math.max(0, Math.floor(t0 * 1000))));
      u.searchParams.set("until", String(Math.ceil(t1 * 1000) + 1));
      u.searchParams.set("order", "desc");
      u.searchParams.set("limit", "100");
      const body = await getJson(u);
      if (gen === this.gen) this.recent = (body.points || []).slice().reverse();
    }

    async poll() {
      if (this.busy || document.hidden) return;
      // A chosen window is fixed; a downsampled range is read again once a minute.
      if (this.window) return;
      if (this.bucketed) { if (++this.polls % 12 === 0) this.reload(); return; }
      // A full reload now and then also picks up points written late with older times.
      if (++this.polls % 12 === 0 || this.truncated) return this.reload();
      // On the live stream, new points arrive by themselves.
      if (this.live) return;
      const gen = this.gen;
      const last = this.points.length ? this.points[this.points.length - 1].t : (Date.now() - RANGES[this.range]) * 1000 - 1;
      this.busy = true;
      try {
        const got = await this.fetchSince(last + 1, gen);
        if (!got) return;
        for (const p of got.points) this.points.push(p);
        const start = (Date.now() - RANGES[this.range]) * 1000;
        let drop = 0;
        while (drop < this.points.length && this.points[drop].t < start) drop++;
        if (drop) this.points.splice(0, drop);
        this.error = null;
      } catch (e) {
        this.error = e.message;
      } finally {
        if (gen === this.gen) { this.busy = false; this.draw(); }
      }
    }

    draw() {
      const n = this.points.length;
      if (this.status) {
        this.status.textContent = this.error
          ? `Could not load data: ${this.error}`
          : this.bucketed
            ? `${(this.total || 0).toLocaleString()} ${this.noun}s in ${this.bucketed.toLocaleString()} buckets · updated ${localText(Date.now()).slice(11)}`
            : `${n.toLocaleString()} ${this.noun}${n === 1 ? "" : "s"}${this.truncated ? " (first " + MAX_POINTS.toLocaleString() + " shown)" : ""} · updated ${localText(Date.now()).slice(11)}`;
        this.status.classList.toggle("bad", !!this.error);
      }
      this.fillTable();
      if (!this.svg) return;
      // A tooltip of what was drawn before would speak of points no longer shown.
      this.unhover();
      const svg = this.svg;
      // One list of plotted points per series; the first one's is what hovering and the
      // data-* attributes below speak of.
      const lines = this.series.map((s) => this.points
        .map((p) => ({ t: p.t / 1000, y: this.numeric(p[s.key]), v: p[s.key], item: p }))
        .filter((p) => Number.isFinite(p.y)));
      const pts = lines[0];
      this.plotted = pts;
      this.fig.classList.toggle("no-data", !pts.length);
      const W = svg.clientWidth || 600, H = svg.clientHeight || 190;
      svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
      svg.replaceChildren();
      const m = { l: 52, r: 12, t: 10, b: 22 };
      const pw = W - m.l - m.r, ph = H - m.t - m.b;
      const [t0, t1] = this.drawn ? this.span() : [Date.now() - RANGES[this.range], Date.now()];
      svg.dataset.points = String(this.bucketed ? this.total : pts.length);
      svg.dataset.buckets = String(this.bucketed);
      svg.dataset.range = this.window ? "custom" : this.range;
      if (pts.length) {
        svg.dataset.last = String(pts[pts.length - 1].v);
        svg.dataset.lastT = String(pts[pts.length - 1].t * 1000);
      } else {
        delete svg.dataset.last;
        delete svg.dataset.lastT;
      }

      const bool = this.format === "boolean";
      let lo = Infinity, hi = -Infinity;
      for (const p of lines.flat()) { if (p.y < lo) lo = p.y; if (p.y > hi) hi = p.y; }
      if (bool || !pts.length) { lo = 0; hi = 1; }
      if (this.fromZero) { lo = Math.min(0, lo); if (hi <= lo) hi = lo + 1; }
      if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
      const yStep = bool ? 1 : niceStep(hi - lo, Math.max(2, Math.floor(ph / 40)));
      if (!bool) { lo = Math.floor(lo / yStep) * yStep; hi = Math.ceil(hi / yStep) * yStep; }
      const X = (t) => m.l + ((t - t0) / (t1 - t0)) * pw;
      const Y = (y) => m.t + ph - ((y - lo) / (hi - lo)) * ph;
      this.scale = { X, t0, t1, m, pw };

      for (let y = lo; y <= hi + yStep / 2; y += yStep) {
        el("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: Y(y), y2: Y(y) }, svg);
        const label = bool ? (y >= 0.5 ? "true" : "false") : fmtNum(y, yStep);
        el("text", { x: m.l - 6, y: Y(y) + 4, "text-anchor": "end" }, svg).textContent = label;
      }
      el("line", { class: "axis", x1: m.l, x2: W - m.r, y1: m.t + ph, y2: m.t + ph }, svg);
      for (const tick of timeTicks(t0, t1, Math.max(2, Math.floor(pw / 90)))) {
        const x = X(tick.t);
        el("line", { class: "axis", x1: x, x2: x, y1: m.t + ph, y2: m.t + ph + 4 }, svg);
        el("text", { x, y: H - 5, "text-anchor": "middle" }, svg).textContent = tick.label;
      }
      if (!pts.length) {
        const t = el("text", { class: "empty", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle" }, svg);
        t.textContent = this.error ? "Could not load data"
          : this.window ? "No data in this range" : `No data in the last ${this.range.replace("h", " h").replace("d", " d")}`;
        return;
      }

      // Drawn last to first, so that the first series (the accent colour) lies on top.
      for (let i = lines.length - 1; i >= 0; i--) this.drawLine(lines[i], i, X, Y, m.t + ph, pw, bool);
      this.Y = Y;
    }

    // One series: a line (and for the first, the area under it), its points when few.
    drawLine(pts, i, X, Y, bottom, pw, bool) {
      if (!pts.length) return;
      const svg = this.svg;
      // Downsample to the min and max of each pixel column, keeping the shape of spikes.
      let line = pts;
      if (pts.length > pw * 2) {
        line = [];
        let col = -1, mn = null, mx = null;
        const flush = () => { if (mn) { if (mn.t <= mx.t) line.push(mn, mx); else line.push(mx, mn); } };
        for (const p of pts) {
          const c = Math.floor(X(p.t));
          if (c !== col) { flush(); col = c; mn = mx = p; }
          else { if (p.y < mn.y) mn = p; if (p.y > mx.y) mx = p; }
        }
        flush();
      }
      let d = "";
      line.forEach((p, j) => {
        const x = X(p.t).toFixed(1), y = Y(p.y).toFixed(1);
        if (j === 0) d += `M${x},${y}`;
        else if (bool) d += `H${x}V${y}`;
        else d += `L${x},${y}`;
      });
      const first = line[0], last = line[line.length - 1];
      const series = i ? ` s${i}` : "";
      if (!i) el("path", { class: "area", d: `${d}L${X(last.t).toFixed(1)},${bottom}L${X(first.t).toFixed(1)},${bottom}Z` }, svg);
      el("path", { class: "line" + series, "data-series": this.series[i].key, d }, svg);
      if (pts.length <= 150 && !this.bucketed) {
        for (const p of pts) el("circle", { class: "pt" + series, cx: X(p.t).toFixed(1), cy: Y(p.y).toFixed(1), r: 2.6 }, svg);
      }
    }

    fillTable() {
      if (!this.table) return;
      const body = $("tbody", this.table);
      const rows = (this.bucketed ? this.recent || [] : this.points).slice(-100).reverse();
      if (!rows.length) {
        body.innerHTML = "";
        const tr = body.insertRow();
        const td = tr.insertCell();
        td.colSpan = 2;
        td.className = "muted";
        td.textContent = this.error ? `Could not load data: ${this.error}` : "No points in this range.";
        return;
      }
      body.replaceChildren(...rows.map((p) => {
        const tr = document.createElement("tr");
        const a = tr.insertCell();
        a.className = "nowrap";
        a.appendChild(timeHtml(p.t, false));
        const b = tr.insertCell();
        b.className = "num";
        b.textContent = valueText(p.v, this.format, this.unit);
        return tr;
      }));
    }

    hover(e) {
      if (!this.plotted || !this.plotted.length || !this.scale) return;
      const r = this.svg.getBoundingClientRect();
      const { X, t0, t1, m, pw } = this.scale;
      const t = t0 + ((e.clientX - r.left - m.l) / pw) * (t1 - t0);
      const pts = this.plotted;
      let a = 0, b = pts.length - 1;
      while (b - a > 1) { const mid = (a + b) >> 1; if (pts[mid].t < t) a = mid; else b = mid; }
      const p = Math.abs(pts[a].t - t) < Math.abs(pts[b].t - t) ? pts[a] : pts[b];
      this.unhover();
      const x = X(p.t);
      this.cursor = [
        el("line", { class: "cursor", x1: x, x2: x, y1: m.t, y2: this.svg.clientHeight - m.b }, this.svg),
        el("circle", { class: "hover-pt", cx: x, cy: this.Y(p.y), r: 3.5 }, this.svg),
      ];
      let tip = $("#chart-tip");
      if (!tip) { tip = document.createElement("div"); tip.id = "chart-tip"; tip.className = "tip"; document.body.appendChild(tip); }
      tip.innerHTML = "";
      const v = document.createElement("strong");
      v.textContent = this.series.length > 1 || this.series[0].label
        ? this.series.map((s) => `${s.label} ${valueText(p.item[s.key], this.format, this.unit)}`).join(" · ")
        : valueText(p.v, this.format, this.unit);
      const when = document.createElement("span");
      when.className = "muted";
      when.textContent = "  " + localText(p.t);
      tip.append(v, when);
      tip.hidden = false;
      // Kept inside the chart's card, whichever side of the cursor that takes.
      const box = this.fig.getBoundingClientRect();
      const left = e.clientX + 12 + tip.offsetWidth > box.right - 4 ? e.clientX - 12 - tip.offsetWidth : e.clientX + 12;
      tip.style.left = `${Math.max(box.left + 4, left)}px`;
      tip.style.top = `${Math.min(Math.max(box.top + 4, e.clientY - 34), box.bottom - tip.offsetHeight - 4)}px`;
    }

    unhover() {
      (this.cursor || []).forEach((c) => c.remove());
      this.cursor = null;
      const tip = $("#chart-tip");
      if (tip) tip.hidden = true;
    }
  }

  // A device page follows its data on the live stream (Server-Sent Events of the connector's
  // commits, this device only): latest values and charts move as each point is stored,
  // without polling. The charts still reload now and then (points written late with older
  // times), and after the stream says it lagged or dropped.
  function setupLive(charts) {
    const host = $("[data-live-src]");
    if (!host || !window.EventSource) return;
    const byResource = new Map();
    for (const c of charts) if (c.fig.dataset.resource) byResource.set(c.fig.dataset.resource, c);
    let pending = false;
    const redraw = new Set();
    const es = new EventSource(host.dataset.liveSrc);
    es.addEventListener("open", () => {
      host.dataset.live = "open";
      charts.forEach((c) => { c.live = true; });
    });
    es.addEventListener("error", () => {
      host.dataset.live = "closed";
      charts.forEach((c) => { c.live = false; });
    });
    es.addEventListener("lagged", () => charts.forEach((c) => c.reload()));
    es.addEventListener("device", onDeviceEvent);
    es.addEventListener("points", (e) => {
      let batch;
      try { batch = JSON.parse(e.data).points || []; } catch (_) { return; }
      for (const p of batch) {
        const shown = $(`[data-time-of="${p.resource}"] time[data-us]`);
        if (!shown || Number(shown.dataset.us) <= p.t) {
          $$(`[data-value-of="${p.resource}"]`).forEach((el) => {
            el.textContent = valueText(p.v, el.dataset.format, el.dataset.unit);
          });
          $$(`[data-time-of="${p.resource}"]`).forEach((el) => { el.replaceChildren(timeHtml(p.t, false)); });
        }
        const seen = $("#last-seen");
        const seenAt = seen && $("time[data-us]", seen);
        if (seen && (!seenAt || Number(seenAt.dataset.us) < p.t)) seen.replaceChildren(timeHtml(p.t, true));
        const chart = byResource.get(p.resource);
        if (chart && !chart.busy && !chart.window) {
          const pts = chart.points;
          if (!pts.length || pts[pts.length - 1].t < p.t) pts.push({ t: p.t, v: p.v });
          else {
            let i = pts.findIndex((q) => q.t >= p.t);
            if (pts[i].t === p.t) pts[i] = { t: p.t, v: p.v }; else pts.splice(i, 0, { t: p.t, v: p.v });
          }
          redraw.add(chart);
        }
      }
      if (!pending && redraw.size) {
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          for (const c of redraw) c.draw();
          redraw.clear();
        });
      }
    });
  }

  // Every chart of the page shows the same window (zoomed, or a custom range), or none.
  // The window is kept in the address (`from`, `to`: ms) and in the links to the data view,
  // so that a reload, a bookmark or the way from the device page to one resource keeps it.
  let pageCharts = [];
  function setWindow(w) {
    pageCharts.filter((c) => c.drawn).forEach((c) => c.setWindow(w));
    const reset = $("#zoom-reset"), error = $("#range-error");
    if (reset) reset.hidden = !w;
    if (error) error.hidden = true;
    if (w) {
      $$("[data-range-picker] a").forEach((b) => b.classList.remove("on"));
      const from = $("#range-from"), to = $("#range-to");
      if (from && to) { from.value = inputTime(w[0]); to.value = inputTime(w[1]); }
    }
    keepInAddress(w ? { from: String(Math.round(w[0])), to: String(Math.round(w[1])) } : { from: null, to: null });
    exportLink();
  }

  // Sets (or, with null, removes) query parameters of this page's address and of its links
  // to a chart's data view.
  function keepInAddress(params) {
    const put = (u) => {
      for (const [k, v] of Object.entries(params)) {
        if (v === null) u.searchParams.delete(k); else u.searchParams.set(k, v);
      }
      return u;
    };
    $$("figure.chart figcaption a").forEach((link) => { link.href = put(new URL(link.href)).toString(); });
    history.replaceState(null, "", put(new URL(location.href)));
  }

  // The window the address asks for (`from` before `to`, both ms), or null.
  function windowInAddress() {
    const q = new URL(location.href).searchParams;
    const a = Number(q.get("from")), b = Number(q.get("to"));
    return q.has("from") && q.has("to") && Number.isFinite(a) && Number.isFinite(b) && a < b ? [a, b] : null;
  }

  // A time as a datetime-local input holds it (local time, to the second).
  function inputTime(ms) { return localText(ms).replace(" ", "T"); }

  // The CSV export link covers what the chart shows.
  function exportLink() {
    const a = $("#export-csv");
    const c = pageCharts.find((x) => x.drawn);
    if (!a || !c) return;
    const [t0, t1] = c.span();
    const u = new URL(a.href, location.origin);
    u.searchParams.set("since", String(Math.max(0, Math.floor(t0 * 1000))));
    u.searchParams.set("until", String(Math.ceil(t1 * 1000) + 1));
    a.href = u.pathname + u.search;
  }

  function setupCharts() {
    const charts = $$("figure.chart[data-src]").map((f) => new Chart(f));
    pageCharts = charts;
    setupLive(charts);
    const asked = charts.some((c) => c.drawn) ? windowInAddress() : null;
    if (asked) {
      setWindow(asked);
      charts.filter((c) => !c.drawn).forEach((c) => c.reload());
    } else {
      charts.forEach((c) => c.reload());
    }
    exportLink();
    const custom = $("#custom-range");
    if (custom) {
      custom.addEventListener("submit", (e) => {
        e.preventDefault();
        const a = new Date($("#range-from").value).getTime(), b = new Date($("#range-to").value).getTime();
        const error = $("#range-error");
        if (!Number.isFinite(a) || !Number.isFinite(b) || b <= a) {
          if (error) { error.textContent = "Choose a start before the end."; error.hidden = false; }
          $("#range-from").setAttribute("aria-invalid", "true");
          $("#range-from").focus();
          return;
        }
        $("#range-from").removeAttribute("aria-invalid");
        if (error) error.hidden = true;
        setWindow([a, b]);
      });
      const reset = $("#zoom-reset");
      if (reset) reset.addEventListener("click", () => {
        reset.hidden = true;
        const r = (charts[0] && charts[0].range) || "1h";
        $$("[data-range-picker] a").forEach((b) => b.classList.toggle("on", b.dataset.range === r));
        charts.forEach((c) => c.setRange(r));
        keepInAddress({ from: null, to: null });
        exportLink();
      });
    }
    $("#export-csv") && $("#export-csv").addEventListener("click", exportLink);
    $$("[data-range-picker] a[data-range]").forEach((a) => {
      a.addEventListener("click", (e) => {
        e.preventDefault();
        const r = a.dataset.range;
        $$("[data-range-picker] a").forEach((b) => b.classList.toggle("on", b.dataset.range === r));
        charts.forEach((c) => c.setRange(r));
        const reset = $("#zoom-reset");
        if (reset) reset.hidden = true;
        exportLink();
        keepInAddress({ range: r, from: null, to: null });
      });
    });
    if (charts.length) setInterval(() => charts.forEach((c) => c.poll()), POLL_MS);
  }

  // ---- Remote lookup (paired connectors): the peer's device list, a device's Remote view --
  //
  // Both ask this site's API, which asks the peer over the encrypted session and answers
  // 503 peer_offline after a few seconds at most; the page then says "Remote site offline"
  // and keeps polling, so it recovers by itself when the peer is back.

  async function fetchJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("signed out");
    }
    const body = await r.json().catch(() => ({}));
    return { status: r.status, ok: r.ok, body };
  }

  function node(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function chip(k, v, differs) {
    const c = node("span", "chip" + (differs ? " differs" : ""));
    c.append(node("span", "k", k), document.createTextNode(v));
    return c;
  }

  const permText = (p) => `${p.principal}: ${p.access}`;
  const permList = (d) => (d.permissions || []).map(permText).sort();
  const confList = (d) => Object.entries(d.config || {}).map(([k, v]) => `${k} = ${valueText(v)}`).sort();

  function stamp(host, sel, verb) {
    const u = $(sel, host);
    if (u) u.textContent = `${verb || "updated"} ${localText(Date.now()).slice(11)}`;
  }

  // "Remote site offline" in words, with the site's reason below it.
  function offlineNodes(peer, res) {
    const why = (res.body && res.body.message) || `${peer} did not answer.`;
    return [node("strong", "", "Remote site offline"), node("div", "small", why)];
  }

  async function pollRemoteList() {
    const host = $("[data-remote-list]");
    if (!host || host.dataset.busy || (document.hidden && host.dataset.loaded)) return;
    host.dataset.busy = "1";
    const peer = host.dataset.peer;
    const status = $("#remote-status", host), table = $("#remote-table", host), pager = $("#remote-pager", host);
    try {
      const res = await fetchJson(host.dataset.remoteList);
      host.dataset.loaded = "1";
      status.classList.remove("bad");
      if (!res.ok) {
        status.classList.toggle("bad", res.status === 503);
        status.replaceChildren(...(res.status === 503 ? offlineNodes(peer, res) : [node("p", "", res.body.message || `${res.status}`)]));
        status.hidden = false;
        table.hidden = true;
        pager.hidden = true;
        host.dataset.state = res.status === 503 ? "offline" : "error";
        stamp(document, "#remote-updated", "tried");
        return;
      }
      const devices = res.body.devices || [];
      const rows = devices.map((d) => {
        const tr = document.createElement("tr");
        tr.dataset.device = d.identity;
        const a = node("a", "mono strong", d.identity);
        a.href = `/connectors/${host.dataset.cid}/devices/${encodeURIComponent(d.identity)}`;
        tr.insertCell().append(a);
        const tags = tr.insertCell();
        tags.className = "chips";
        for (const [k, v] of Object.entries(d.tags || {})) tags.append(chip(k, v, false));
        const perms = tr.insertCell();
        perms.className = "small";
        perms.textContent = permList(d).join(", ") || "—";
        tr.insertCell().append(node("span", "badge " + (d.state === "locked" ? "locked" : "plain"), d.state));
        const seen = tr.insertCell();
        seen.className = "nowrap";
        if (d.last_seen) seen.append(timeHtml(d.last_seen, true)); else seen.append(node("span", "muted", "never"));
        return tr;
      });
      $("tbody", table).replaceChildren(...rows);
      table.hidden = !rows.length;
      status.hidden = !!rows.length;
      if (!rows.length) {
        const filtered = host.dataset.filtered !== undefined;
        status.replaceChildren(node("p", "", filtered ? `No device of ${peer} matches this filter.` : `${peer} has no devices in this connector.`));
      }
      // The total of what the search and filters keep on the peer, and its pages both ways.
      const total = Number(res.body.total || 0);
      const matches = total === 1 ? "1 device matches" : `${total.toLocaleString("en-US")} devices match`;
      $("#remote-total", host).textContent = host.dataset.filtered !== undefined ? matches : countText(total, "device");
      const page = Number(host.dataset.page) || 1;
      const link = (sel, cursor, n) => {
        const a = $(sel, host);
        a.hidden = !cursor;
        if (cursor) a.href = `?${host.dataset.nextBase}&cursor=${encodeURIComponent(cursor)}&page=${n}`;
      };
      link("#remote-next", res.body.next, page + 1);
      link("#remote-prev", res.body.prev, Math.max(1, page - 1));
      $("#remote-page", host).hidden = !(res.body.next || res.body.prev);
      pager.hidden = false;
      host.dataset.state = "ok";
      stamp(document, "#remote-updated");
    } catch (_) {
      /* this site itself is unreachable: the header's dot says so */
    } finally {
      delete host.dataset.busy;
    }
  }

  function fillSide(td, d, field, other) {
    td.replaceChildren();
    if (!d) { td.append(node("span", "missing", "not on this site")); return; }
    if (field === "state") {
      td.append(node("span", "badge " + (d.state === "locked" ? "locked" : "plain"), d.state));
    } else if (field === "tags") {
      const theirs = (other && other.tags) || {};
      const entries = Object.entries(d.tags || {});
      for (const [k, v] of entries) td.append(chip(k, v, !!other && theirs[k] !== v));
      if (!entries.length) td.append(node("span", "muted", "no tags"));
    } else {
      const mine = field === "permissions" ? permList(d) : confList(d);
      const theirs = other ? (field === "permissions" ? permList(other) : confList(other)) : mine;
      for (const item of mine) td.append(node("span", "item" + (theirs.includes(item) ? "" : " differs"), item));
      if (!mine.length) td.append(node("span", "muted", "—"));
    }
  }

  function sameField(a, b, field) {
    if (field === "state") return a.state === b.state;
    if (field === "permissions") return JSON.stringify(permList(a)) === JSON.stringify(permList(b));
    if (field === "config") return JSON.stringify(confList(a)) === JSON.stringify(confList(b));
    const ka = Object.keys(a.tags || {}), kb = Object.keys(b.tags || {});
    return ka.length === kb.length && ka.every((k) => (b.tags || {})[k] === a.tags[k]);
  }

  async function pollRemoteDevice() {
    const host = $("[data-remote-device]");
    if (!host || host.dataset.busy || (document.hidden && host.dataset.loaded)) return;
    host.dataset.busy = "1";
    const peer = host.dataset.peer;
    const status = $("#remote-device-status", host), table = $("#remote-compare", host), verdict = $("#remote-verdict", host);
    try {
      const [local, remote] = await Promise.all([fetchJson(host.dataset.localDevice), fetchJson(host.dataset.remoteDevice)]);
      host.dataset.loaded = "1";
      if (!remote.ok && remote.status !== 404) {
        status.replaceChildren(...(remote.status === 503 ? offlineNodes(peer, remote) : [node("span", "", remote.body.message || `${remote.status}`)]));
        status.classList.add("bad");
        status.hidden = false;
        table.hidden = true;
        verdict.replaceChildren();
        host.dataset.state = remote.status === 503 ? "offline" : "error";
        peerPending = null;
        stamp(host, ".remote-updated", "tried");
        return;
      }
      const l = local.ok ? local.body : null, r = remote.ok ? remote.body : null;
      let differs = 0;
      for (const tr of $$("tr[data-field]", table)) {
        const field = tr.dataset.field;
        fillSide($("td.local", tr), l, field, r);
        const rc = $("td.remote", tr);
        fillSide(rc, r, field, l);
        if (!r) rc.firstChild.textContent = `not on ${peer}`;
        const odd = !!(l && r) && !sameField(l, r, field);
        tr.classList.toggle("differs", odd);
        if (odd) differs++;
      }
      status.hidden = true;
      status.classList.remove("bad");
      table.hidden = false;
      let word, cls;
      if (!r) { word = `Not on ${peer}`; cls = "warn"; }
      else if (!l) { word = `Only on ${peer}`; cls = "warn"; }
      else if (differs) { word = differs === 1 ? "1 field differs" : `${differs} fields differ`; cls = "warn"; }
      else { word = "Same on both sites"; cls = "on"; }
      verdict.replaceChildren(node("span", "pill " + cls, word));
      // The pending badge agrees with this view: this site's latest change is on its way
      // while the device API says so and the peer's record does not show it yet.
      peerPending = !!(l && l.sync && l.sync.pending && (differs > 0 || !r));
      const badge = $("#device-pending");
      if (badge) badge.hidden = !peerPending;
      host.dataset.state = "ok";
      host.dataset.differs = String(differs);
      stamp(host, ".remote-updated");
    } catch (_) {
      /* this site itself is unreachable: the header's dot says so */
    } finally {
      delete host.dataset.busy;
    }
  }

  // ---- Points waiting on the Target for a missing resource (paired Source) ----------------
  //
  // The Source asks its Target (through this site's API, live) which resources its points
  // wait for; the Target's own pages have a Create button for each.

  async function pollWaiting() {
    const host = $("[data-waiting-src]");
    if (!host || host.dataset.busy || (document.hidden && host.dataset.loaded)) return;
    host.dataset.busy = "1";
    const peer = host.dataset.peer;
    try {
      const res = await fetchJson(host.dataset.waitingSrc);
      host.dataset.loaded = "1";
      const rows = res.ok ? (res.body.resources || []) : [];
      host.dataset.state = res.ok ? "ok" : "error";
      if (!rows.length) { host.hidden = true; host.replaceChildren(); return; }
      const list = node("ul", "waiting");
      for (const w of rows) {
        const li = node("li");
        li.dataset.waiting = w.resource;
        li.append(`${countText(w.points, "point")} of `, node("code", "", w.resource),
          ` (${w.format}) from ${countText(w.devices, "device")} wait for the resource on ${peer} — create it there (`,
          node("strong", "", `Create ${w.resource}`), ` on the connector's Resources or Remote-Sync tab on ${peer}).`);
        list.append(li);
      }
      const head = node("p");
      head.append(node("strong", "", `${peer} has no resource for some of the data it receives.`),
        ` Its points are kept there and applied once the resource is created; after the retention period they are dropped and recorded as a gap.`);
      host.replaceChildren(head, list);
      host.hidden = false;
    } catch (_) {
      /* this site itself is unreachable: the header's dot says so */
    } finally {
      delete host.dataset.busy;
    }
  }

  function countText(n, noun) {
    return n === 1 ? `1 ${noun}` : `${Number(n).toLocaleString("en-US")} ${noun}s`;
  }

  // ---- Wiring --------------------------------------------------------------------------

  document.addEventListener("click", (e) => {
    const btn = e.target.closest && e.target.closest("button.copy[data-copy]");
    if (btn) copy(btn);
  });
  document.addEventListener("submit", confirmSubmit);
  document.addEventListener("change", (e) => {
    const form = e.target.closest && e.target.closest("form[data-autosubmit]");
    if (form && e.target.tagName === "SELECT") form.requestSubmit();
  });

  paintTimes(document);
  setInterval(() => $$("time[data-rel]").forEach(paintTime), 15000);
  pollHealth();
  setInterval(pollHealth, POLL_MS);
  setInterval(pollAlarms, POLL_MS);
  tickCountdown();
  setInterval(tickCountdown, 1000);
  setInterval(pollSyncState, 2000);
  setupLiveParts();
  setupCharts();
  if ($("[data-device-src]")) setInterval(pollDevice, POLL_MS);
  if ($("[data-remote-list]")) { pollRemoteList(); setInterval(pollRemoteList, POLL_MS); }
  if ($("[data-remote-device]")) { pollRemoteDevice(); setInterval(pollRemoteDevice, POLL_MS); }
  if ($("[data-waiting-src]")) { pollWaiting(); setInterval(pollWaiting, POLL_MS); }
})();
