// Sprawl dashboard: a live view of one node, fed by GET /v1/dashboard/stream (SSE).
// No framework and no library.  Every string from the server reaches the page
// through textContent or a vetted attribute, never parsed as HTML: topic, group and
// node names are user input.
"use strict";

(function () {
  const WINDOW_S = 300; // the charts' time span
  const MAX_SERIES = 6;
  const RATE_WINDOW_S = 5; // the span of the rates shown as numbers // topics drawn on the big chart
  const COLORS = ["#3b6ef5", "#12b886", "#f76707", "#ae3ec9", "#e03131", "#0c8599"];

  /** topic -> [{t, pub, dlv}] raw counters (server clock seconds). */
  const history = new Map();
  /** [{t, pub, dlv}] summed over topics. */
  let totals = [];
  /** topic -> [{t, low, point, high}]: what the node's forecast expected of its published rate. */
  const bandHistory = new Map();
  const FORECAST_S = 60; // the chart's span ahead of now while forecasts are shown
  let last = null;
  let snapshots = 0;

  // -- small DOM helpers -------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function td(text, cls) {
    return el("td", cls, text);
  }

  function setText(id, text) {
    const e = $(id);
    if (e) e.textContent = String(text);
  }

  function fmtInt(n) {
    return typeof n === "number" && isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return "–";
    if (r >= 1e6) return (r / 1e6).toFixed(1) + "M";
    if (r >= 1e4) return (r / 1e3).toFixed(1) + "k";
    if (r >= 100) return Math.round(r).toLocaleString("en-US");
    return r.toFixed(1);
  }

  function fmtAxis(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
    return String(Math.round(v * 10) / 10);
  }

  function fmtDuration(s) {
    s = Math.floor(s || 0);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  /** An http(s) URL for a member's advertised HTTP address, or null if it is not one. */
  function memberURL(http) {
    if (typeof http !== "string" || !http) return null;
    let url = http;
    if (!/^https?:\/\//i.test(url)) {
      if (!/^[A-Za-z0-9.\-\[\]:]+$/.test(url)) return null;
      url = "http://" + url;
    }
    try {
      const u = new URL(url);
      if (u.protocol !== "http:" && u.protocol !== "https:") return null;
      return u.origin + "/";
    } catch (e) {
      return null;
    }
  }

  // -- rates ------------------------------------------------------------------------

  function push(series, point) {
    const prev = series[series.length - 1];
    if (prev && (point.pub < prev.pub || point.dlv < prev.dlv)) series.length = 0; // counters reset
    if (prev && point.t <= prev.t) return;
    series.push(point);
    const cutoff = point.t - WINDOW_S - 2;
    while (series.length && series[0].t < cutoff) series.shift();
  }

  /** [{t, pub, dlv}] rates between consecutive counter points. */
  function rates(series) {
    const out = [];
    for (let i = 1; i < series.length; i++) {
      const a = series[i - 1], b = series[i], dt = b.t - a.t;
      if (dt > 0) out.push({ t: b.t, pub: (b.pub - a.pub) / dt, dlv: (b.dlv - a.dlv) / dt });
    }
    return out;
  }

  /** The rate over the last RATE_WINDOW_S seconds (steadier to read than one interval). */
  function latestRate(series) {
    if (series.length < 2) return null;
    const b = series[series.length - 1];
    let a = series[series.length - 2];
    for (let i = series.length - 2; i >= 0 && b.t - series[i].t <= RATE_WINDOW_S + 0.5; i--) a = series[i];
    const dt = b.t - a.t;
    return dt > 0 ? { t: b.t, pub: (b.pub - a.pub) / dt, dlv: (b.dlv - a.dlv) / dt } : null;
  }

  // -- charts -------------------------------------------------------------------------

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function sizeCanvas(c, cssW, cssH) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(cssW * dpr)), h = Math.max(1, Math.round(cssH * dpr));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    return ctx;
  }

  function drawChart(now, lines, bands, marks) {
    bands = bands || [];
    marks = marks || [];
    const c = $("chart");
    const W = c.clientWidth || 800, H = 220;
    const ctx = sizeCanvas(c, W, H);
    const L = 52, R = 14, T = 12, B = 26;
    const pw = W - L - R, ph = H - T - B;
    let max = 0;
    for (const ln of lines) for (const p of ln.points) max = Math.max(max, p.v);
    for (const b of bands) for (const p of b.points) max = Math.max(max, p.high);
    const ymax = niceMax(max * 1.1);
    const ahead = bands.some((b) => b.points.length > 1) ? FORECAST_S : 0;
    const span = WINDOW_S + ahead;
    const x = (t) => L + pw * (1 - (now + ahead - t) / span);
    const y = (v) => T + ph * (1 - v / ymax);

    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4, yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = i === 0 ? "#c9d0da" : "#edf0f4";
      ctx.beginPath();
      ctx.moveTo(L, yy);
      ctx.lineTo(W - R, yy);
      ctx.stroke();
      ctx.fillStyle = "#66707d";
      ctx.textAlign = "right";
      ctx.fillText(fmtAxis(v), L - 8, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let m = 5; m >= (ahead ? -1 : 0); m--) {
      const xx = x(now - m * 60);
      ctx.fillStyle = "#66707d";
      const label = m === 0 ? "now" : m < 0 ? "+" + -m + "m" : "−" + m + "m";
      ctx.fillText(label, Math.min(Math.max(xx, L + 10), W - R - 12), H - B + 8);
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(L, T - 2, pw, ph + 4);
    ctx.clip();
    const drawn = [];
    for (const b of bands) {
      // The forecast band: the interval the node's model expects the published rate in.
      if (b.points.length < 2) continue;
      drawn.push(b.name);
      ctx.globalAlpha = 0.16;
      ctx.fillStyle = b.color;
      ctx.beginPath();
      b.points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.high)) : ctx.moveTo(x(p.t), y(p.high))));
      for (let i = b.points.length - 1; i >= 0; i--) ctx.lineTo(x(b.points[i].t), y(b.points[i].low));
      ctx.closePath();
      ctx.fill();
      ctx.globalAlpha = 0.6;
      ctx.strokeStyle = b.color;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      b.points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.point)) : ctx.moveTo(x(p.t), y(p.point))));
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.globalAlpha = 1;
    }
    c.dataset.bands = drawn.join(",");
    if (ahead) {
      const xn = Math.round(x(now)) + 0.5;
      ctx.strokeStyle = "#c9d0da";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(xn, T);
      ctx.lineTo(xn, T + ph);
      ctx.stroke();
    }
    let shownMarks = 0;
    for (const m of marks) {
      // An anomaly: a mark where it started (red for a surge, amber for a drop or silence).
      if (m.t < now - WINDOW_S || m.t > now) continue;
      shownMarks++;
      const xm = Math.round(x(m.t)) + 0.5;
      ctx.strokeStyle = m.kind === "surge" ? "#e03131" : "#f08c00";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(xm, T);
      ctx.lineTo(xm, T + ph);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      ctx.moveTo(xm - 5, T);
      ctx.lineTo(xm + 5, T);
      ctx.lineTo(xm, T + 7);
      ctx.closePath();
      ctx.fill();
    }
    c.dataset.marks = String(shownMarks);
    for (const ln of lines) {
      if (ln.points.length < 1) continue;
      ctx.strokeStyle = ln.color;
      ctx.lineWidth = ln.dash ? 1.5 : 2;
      ctx.setLineDash(ln.dash ? [5, 4] : []);
      ctx.lineJoin = "round";
      ctx.beginPath();
      ln.points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.stroke();
      if (!ln.dash && ln.points.length > 1) {
        ctx.setLineDash([]);
        ctx.globalAlpha = 0.07;
        ctx.fillStyle = ln.color;
        ctx.lineTo(x(ln.points[ln.points.length - 1].t), y(0));
        ctx.lineTo(x(ln.points[0].t), y(0));
        ctx.closePath();
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    }
    ctx.restore();
    ctx.setLineDash([]);
    if (!lines.some((ln) => ln.points.length > 1)) {
      ctx.fillStyle = "#8a94a3";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillText("collecting rates…", L + pw / 2, T + ph / 2);
    }
  }

  function sparkline(series, now, color) {
    const c = el("canvas", "spark");
    const W = 120, H = 24;
    const ctx = sizeCanvas(c, W, H);
    const rs = rates(series);
    let max = 0;
    for (const r of rs) max = Math.max(max, r.pub, r.dlv);
    const ymax = niceMax(max);
    const x = (t) => W * (1 - (now - t) / WINDOW_S);
    const y = (v) => H - 2 - (H - 4) * (v / ymax);
    ctx.strokeStyle = "#edf0f4";
    ctx.beginPath();
    ctx.moveTo(0, H - 1.5);
    ctx.lineTo(W, H - 1.5);
    ctx.stroke();
    for (const [key, dash] of [["dlv", true], ["pub", false]]) {
      if (rs.length < 2) break;
      ctx.strokeStyle = color;
      ctx.globalAlpha = dash ? 0.55 : 1;
      ctx.setLineDash(dash ? [3, 2] : []);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      rs.forEach((r, i) => (i ? ctx.lineTo(x(r.t), y(r[key])) : ctx.moveTo(x(r.t), y(r[key]))));
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    return c;
  }

  // -- rendering -----------------------------------------------------------------------

  function renderHeader(s) {
    setText("node-id", s.node_id);
    setText("version", s.version ? "v" + s.version + " · up " + fmtDuration(s.uptime_s) : "");
    const r = $("ready");
    r.textContent = s.ready ? "ready" : "not ready";
    r.title = s.reason || "";
    r.className = "pill " + (s.ready ? "pill-ok" : "pill-bad");
    document.title = "Sprawl · " + s.node_id;
  }

  function renderMembers(cluster) {
    const members = Array.isArray(cluster.members) ? cluster.members : [];
    const drained = new Set(Array.isArray(cluster.drained) ? cluster.drained.map(String) : []);
    const tb = document.querySelector("#members tbody");
    tb.replaceChildren();
    const counts = {};
    for (const m of members) {
      const state = String(m.state || "unknown");
      counts[state] = (counts[state] || 0) + 1;
      const tr = el("tr");
      tr.dataset.member = String(m.id);
      const name = td(m.id, "name");
      if (m.self) name.appendChild(el("span", "tag", "this node"));
      tr.appendChild(name);
      const st = td("");
      const known = ["alive", "suspect", "dead", "left"].includes(state) ? state : "left";
      st.appendChild(el("span", "pill state state-" + known, state));
      if (drained.has(String(m.id))) {
        const badge = el("span", "pill pill-warn drained", "drained");
        badge.title = "drained: leads no partition and gets no new replica (sprawlctl cluster undrain)";
        st.appendChild(badge);
      }
      tr.appendChild(st);
      tr.appendChild(td(fmtInt(m.incarnation), "num"));
      tr.appendChild(td(m.peer || "–"));
      const link = td("");
      const url = memberURL(m.http);
      if (url) {
        const a = el("a", null, m.http);
        a.href = url;
        link.appendChild(a);
      } else {
        link.textContent = m.http || "–";
      }
      tr.appendChild(link);
      tb.appendChild(tr);
    }
    const alive = counts.alive || 0;
    setText("k-members", alive + " / " + members.length);
    const parts = [];
    for (const k of ["suspect", "dead", "left"]) if (counts[k]) parts.push(counts[k] + " " + k);
    if (drained.size) parts.push(drained.size + " drained");
    setText("k-members-sub", parts.length ? parts.join(" · ") : "all alive");
    $("k-members-sub").className = "sub" + (parts.length ? " warn" : "");
    setText("mode", cluster.mode ? String(cluster.mode) : "");
  }

  function renderRaft(cluster) {
    const raft = cluster.raft || {};
    setText("k-leader", cluster.leader || "none");
    $("k-leader").title = String(cluster.leader || "");
    setText("k-term", "term " + fmtInt(cluster.term));
    const voters = Array.isArray(raft.voters) ? raft.voters : [];
    const learners = Array.isArray(raft.learners) ? raft.learners : [];
    const ft = typeof raft.fault_tolerance === "number" ? raft.fault_tolerance : null;
    setText("k-ft", ft === null ? "–" : String(ft));
    $("k-ft").title = "voter failures Raft survives now";
    const target = typeof raft.target_voters === "number" ? raft.target_voters : null;
    const full = raft.fault_tolerant === true;
    setText(
      "k-ft-sub",
      target === null
        ? ""
        : voters.length + " of " + target + " voters" + (full ? "" : " · not at full strength")
    );
    $("k-ft-sub").className = "sub" + (target !== null && !full ? " warn" : "");
    const dl = $("raft");
    dl.replaceChildren();
    const rows = [
      ["leader", cluster.leader || "none"],
      ["term", fmtInt(cluster.term)],
      ["this node's role", raft.role || "–"],
      ["commit index", fmtInt(raft.commit_index)],
      ["applied", fmtInt(raft.applied)],
      ["voters", voters.join(", ") || "–"],
      ["learners", learners.join(", ") || "–"],
      ["voter target", target === null ? "–" : String(target)],
      ["fault tolerance", ft === null ? "–" : ft + (ft === 1 ? " voter failure" : " voter failures")],
    ];
    for (const [k, v] of rows) {
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, v));
    }
    if (cluster.mode === "single-node") {
      dl.appendChild(el("dd", "note", "Single-node mode: this node leads every partition."));
    }
  }

  function filterText() {
    return ($("filter").value || "").trim().toLowerCase();
  }

  function renderTopics(s, now) {
    const topics = Array.isArray(s.topics) ? s.topics : [];
    const f = filterText();
    const shown = topics.filter((t) => !f || String(t.name).toLowerCase().includes(f));
    const order = chartTopics(topics);
    const tb = document.querySelector("#topics tbody");
    tb.replaceChildren();
    let totPub = 0, totDlv = 0, nparts = 0;
    for (const t of topics) {
      const r = latestRate(history.get(t.name) || []);
      if (r) {
        totPub += r.pub;
        totDlv += r.dlv;
      }
      nparts += (t.partitions || []).length;
    }
    for (const t of shown) {
      const series = history.get(t.name) || [];
      const r = latestRate(series);
      const tr = el("tr");
      tr.dataset.topic = String(t.name);
      tr.appendChild(td(t.name, "name"));
      tr.appendChild(td(fmtInt((t.partitions || []).length), "num"));
      tr.appendChild(td(t.storage || "–"));
      tr.appendChild(td(fmtInt(t.messages), "num messages"));
      const b = t.bytes || {};
      for (const k of ["memory", "lmdb", "s3"]) tr.appendChild(td(fmtBytes(b[k]), "num" + (b[k] ? "" : " zero")));
      tr.appendChild(td(fmtRate(r ? r.pub : null), "num pub-rate"));
      tr.appendChild(td(fmtRate(r ? r.dlv : null), "num dlv-rate"));
      const f = t.forecast;
      const fc = td(f ? fmtRate(f.low) + "–" + fmtRate(f.high) : "–", "num forecast");
      if (f) fc.title = "the forecast expects " + fmtRate(f.point) + " msgs/s published here now";
      tr.appendChild(fc);
      const sp = td("");
      const idx = order.indexOf(t.name);
      sp.appendChild(sparkline(series, now, idx >= 0 ? COLORS[idx] : "#8a94a3"));
      tr.appendChild(sp);
      tb.appendChild(tr);
    }
    $("topics-empty").classList.toggle("hidden", topics.length > 0);
    const more = (s.topics_total || 0) - topics.length;
    setText("topics-more", more > 0 ? "… and " + more + " more topics not shown" : "");
    setText("k-topics", fmtInt(s.topics_total != null ? s.topics_total : topics.length));
    setText("k-partitions", fmtInt(nparts) + " partitions");
    setText("k-pub", history.size && totals.length > 1 ? fmtRate(totPub) : "–");
    setText("k-dlv", history.size && totals.length > 1 ? fmtRate(totDlv) : "–");
  }

  function renderPartitions(s) {
    const tb = document.querySelector("#partitions tbody");
    tb.replaceChildren();
    const f = filterText();
    for (const t of s.topics || []) {
      if (f && !String(t.name).toLowerCase().includes(f)) continue;
      for (const p of t.partitions || []) {
        const tr = el("tr");
        tr.dataset.topic = String(t.name);
        tr.appendChild(td(t.name, "name"));
        tr.appendChild(td(p.p, "num"));
        tr.appendChild(td(p.leader || "none"));
        tr.appendChild(td(Array.isArray(p.replicas) ? p.replicas.join(", ") : "–"));
        tr.appendChild(td(fmtInt(p.epoch), "num"));
        tr.appendChild(td(fmtInt(p.low), "num"));
        tr.appendChild(td(fmtInt(p.hw), "num hw"));
        const b = p.bytes || {};
        for (const k of ["memory", "lmdb", "s3"]) tr.appendChild(td(fmtBytes(b[k]), "num" + (b[k] ? "" : " zero")));
        tb.appendChild(tr);
      }
    }
  }

  function renderGroups(s) {
    const tb = document.querySelector("#groups tbody");
    tb.replaceChildren();
    const rows = [];
    for (const t of s.topics || []) for (const g of t.groups || []) rows.push([t, g]);
    const maxLag = Math.max(1, ...rows.map(([, g]) => g.lag || 0));
    let total = 0;
    const f = filterText();
    for (const [t, g] of rows) {
      total += g.lag || 0;
      if (f && !String(t.name).toLowerCase().includes(f)) continue;
      const tr = el("tr");
      tr.dataset.topic = String(t.name);
      tr.dataset.group = String(g.name);
      tr.appendChild(td(t.name, "name"));
      tr.appendChild(td(g.name));
      tr.appendChild(td(fmtInt(g.lag), "num lag" + (g.lag ? "" : " zero")));
      const bar = td("");
      const outer = el("div", "lagbar");
      const inner = el("span", g.lag ? null : "w0");
      // CSSOM (not a style attribute): allowed by the page's CSP.
      inner.style.width = Math.round((100 * (g.lag || 0)) / maxLag) + "%";
      outer.appendChild(inner);
      bar.appendChild(outer);
      tr.appendChild(bar);
      tr.appendChild(td(fmtInt(g.in_flight), "num"));
      tr.appendChild(td(fmtInt(g.dead_lettered), "num" + (g.dead_lettered ? "" : " zero")));
      tb.appendChild(tr);
    }
    $("groups-empty").classList.toggle("hidden", rows.length > 0);
    setText("k-lag", fmtInt(total));
    setText("k-groups", rows.length + (rows.length === 1 ? " group" : " groups"));
  }

  /** The declared pipelines (derived topics) and their lag as this node sees it. */
  function renderPipelines(s) {
    const rows = Array.isArray(s.pipelines) ? s.pipelines : [];
    const tb = document.querySelector("#pipelines tbody");
    tb.replaceChildren();
    for (const p of rows) {
      const tr = el("tr");
      tr.dataset.pipeline = String(p.name);
      tr.appendChild(td(p.name, "name"));
      tr.appendChild(td(p.source));
      tr.appendChild(td(p.target));
      tr.appendChild(td(p.filter == null ? "(all)" : p.filter, "muted"));
      tr.appendChild(td(p.lag == null ? "–" : fmtInt(p.lag), "num lag" + (p.lag ? "" : " zero")));
      // A record the target can never take: "stalled: why" (on_reject stall), else the policy.
      const stalled = p.stalled ? "stalled: " + String(p.stalled) : null;
      tr.appendChild(td(stalled || String(p.on_reject || "stall"), stalled ? "reject stalled" : "reject muted"));
      tb.appendChild(tr);
    }
    $("pipelines-empty").classList.toggle("hidden", rows.length > 0);
  }

  /** The topics on the big chart: the busiest over the window, then by name. */
  function chartTopics(topics) {
    const score = (name) => {
      const s = history.get(name) || [];
      return s.length > 1 ? s[s.length - 1].pub - s[0].pub + (s[s.length - 1].dlv - s[0].dlv) : 0;
    };
    return topics
      .map((t) => t.name)
      .sort((a, b) => score(b) - score(a) || (a < b ? -1 : a > b ? 1 : 0))
      .slice(0, MAX_SERIES);
  }

  function renderChart(s, now) {
    const names = chartTopics(s.topics || []);
    const lines = [];
    const bands = [];
    const byName = new Map((s.topics || []).map((t) => [t.name, t]));
    const legend = $("legend");
    legend.replaceChildren();
    names.forEach((name, i) => {
      const rs = rates(history.get(name) || []);
      lines.push({ color: COLORS[i], dash: false, points: rs.map((r) => ({ t: r.t, v: r.pub })) });
      lines.push({ color: COLORS[i], dash: true, points: rs.map((r) => ({ t: r.t, v: r.dlv })) });
      const past = bandHistory.get(name) || [];
      const f = (byName.get(name) || {}).forecast;
      const future = f && Array.isArray(f.ahead) ? f.ahead.map((a) => ({ t: a[0], point: a[1], low: a[2], high: a[3] })) : [];
      bands.push({ name: name, color: COLORS[i], points: past.concat(future) });
      const key = el("span", "key c" + i);
      key.appendChild(el("span", "sw"));
      key.appendChild(el("span", null, name));
      legend.appendChild(key);
    });
    if (bands.some((b) => b.points.length > 1)) {
      const k = el("span", "key");
      k.appendChild(el("span", "sw band"));
      k.appendChild(el("span", null, "forecast"));
      legend.appendChild(k);
    }
    if (names.length) {
      const a = el("span", "key");
      a.appendChild(el("span", "sw"));
      a.appendChild(el("span", null, "published"));
      const b = el("span", "key");
      b.appendChild(el("span", "sw dash"));
      b.appendChild(el("span", null, "delivered"));
      legend.appendChild(a);
      legend.appendChild(b);
    }
    const marks = (Array.isArray(s.anomalies) ? s.anomalies : []).map((a) => ({ t: a.start, kind: a.kind }));
    drawChart(now, lines, bands, marks);
  }

  function renderAnomalies(s) {
    const list = Array.isArray(s.anomalies) ? s.anomalies : [];
    const tb = document.querySelector("#anomalies tbody");
    tb.replaceChildren();
    for (const a of list) {
      const tr = el("tr");
      tr.dataset.kind = String(a.kind);
      tr.appendChild(td(new Date(a.start * 1000).toLocaleTimeString("en-GB"), "when"));
      tr.appendChild(td(a.series, "name series"));
      const k = td("");
      const known = ["surge", "drop", "silent"].includes(a.kind) ? a.kind : "drop";
      k.appendChild(el("span", "pill anomaly-" + known, a.kind));
      tr.appendChild(k);
      tr.appendChild(td(fmtRate(a.observed), "num"));
      tr.appendChild(td(fmtRate(a.low) + "–" + fmtRate(a.high), "num"));
      tr.appendChild(td(fmtRate(a.peak), "num"));
      tr.appendChild(td(a.end === null || a.end === undefined ? "ongoing" : fmtDuration(a.end - a.start), "state"));
      tb.appendChild(tr);
    }
    $("anomalies-empty").textContent = s.forecast === false ? "Forecasting is off on this node (--forecast false)." : "No traffic anomalies.";
    $("anomalies-empty").classList.toggle("hidden", list.length > 0);
  }

  /** The faults this node names (GET /v1/cluster/faults), worst first. */
  function renderFaults(s) {
    const faults = Array.isArray(s.faults) ? s.faults : [];
    const tb = document.querySelector("#faults tbody");
    tb.replaceChildren();
    for (const f of faults) {
      const tr = el("tr");
      tr.dataset.code = String(f.code);
      tr.dataset.node = String(f.node || "");
      const sev = ["critical", "error", "warning"].includes(f.severity) ? f.severity : "warning";
      const st = td("");
      st.appendChild(el("span", "pill sev-" + sev, String(f.severity)));
      tr.appendChild(st);
      tr.appendChild(td(f.code, "name code"));
      tr.appendChild(td(f.node || "cluster", "fnode"));
      const parts = Array.isArray(f.partitions) ? f.partitions : [];
      const shown = parts.slice(0, 8).join(", ") + (parts.length > 8 ? " +" + (parts.length - 8) : "");
      tr.appendChild(td(shown || "–", "parts"));
      const what = td("", "what");
      what.appendChild(el("div", null, String(f.message || "")));
      what.appendChild(el("div", "next", "Next: " + String(f.next_step || "")));
      tr.appendChild(what);
      tb.appendChild(tr);
    }
    $("faults-empty").classList.toggle("hidden", faults.length > 0);
    setText("faults-count", faults.length ? faults.length + (faults.length === 1 ? " fault" : " faults") : "");
  }

  /** The memory card: what counts against --memory-budget, and the process's RssAnon beside it. */
  function renderMemory(m) {
    if (!m) return;
    setText("k-mem", fmtBytes(m.used) + " / " + fmtBytes(m.budget));
    const sub = $("k-mem-sub");
    sub.textContent = m.rss_anon != null ? "process " + fmtBytes(m.rss_anon) + " anon" : "";
    sub.classList.toggle("warn", !!m.warning);
    sub.title = m.warning || "";
  }

  function render(s) {
    const now = s.ts;
    renderHeader(s);
    renderFaults(s);
    renderMemory(s.memory);
    renderMembers(s.cluster || {});
    renderRaft(s.cluster || {});
    renderTopics(s, now);
    renderPartitions(s);
    renderGroups(s);
    renderPipelines(s);
    renderChart(s, now);
    renderAnomalies(s);
  }

  function ingest(s) {
    const now = s.ts;
    const seen = new Set();
    let pub = 0, dlv = 0;
    for (const t of s.topics || []) {
      seen.add(t.name);
      if (!history.has(t.name)) history.set(t.name, []);
      push(history.get(t.name), { t: now, pub: t.published || 0, dlv: t.delivered || 0 });
      pub += t.published || 0;
      dlv += t.delivered || 0;
    }
    for (const name of Array.from(history.keys())) if (!seen.has(name)) history.delete(name);
    for (const t of s.topics || []) {
      const f = t.forecast;
      if (!f) continue;
      if (!bandHistory.has(t.name)) bandHistory.set(t.name, []);
      const b = bandHistory.get(t.name);
      if (b.length && b[b.length - 1].t >= now) continue;
      b.push({ t: now, low: f.low, point: f.point, high: f.high });
      while (b.length && b[0].t < now - WINDOW_S - 2) b.shift();
    }
    for (const name of Array.from(bandHistory.keys())) if (!seen.has(name)) bandHistory.delete(name);
    push(totals, { t: now, pub: pub, dlv: dlv });
  }

  // -- the live feed ------------------------------------------------------------------------

  function setLive(text, cls) {
    const p = $("live");
    p.textContent = text;
    p.className = "pill " + cls;
  }

  function connect() {
    // With authentication on, open the page as /?access_token=TOKEN (an admin token):
    // EventSource cannot send an Authorization header, so the token rides in the query.
    const token = new URLSearchParams(window.location.search).get("access_token");
    const feed = "/v1/dashboard/stream" + (token ? "?access_token=" + encodeURIComponent(token) : "");
    const es = new EventSource(feed);
    es.onopen = () => setLive("live", "pill-ok");
    es.onmessage = (ev) => {
      let s;
      try {
        s = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (!s || s.error) return;
      last = s;
      snapshots++;
      document.body.dataset.snapshots = String(snapshots);
      ingest(s);
      render(s);
    };
    es.addEventListener("error", (ev) => {
      // Either the server's "event: error" frame or a dropped connection;
      // EventSource reconnects by itself in both cases.
      setLive(ev && ev.data ? "node stopping" : "reconnecting", "pill-warn");
    });
  }

  function start() {
    $("filter").addEventListener("input", () => last && render(last));
    window.addEventListener("resize", () => last && renderChart(last, last.ts));
    drawChart(0, []);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
