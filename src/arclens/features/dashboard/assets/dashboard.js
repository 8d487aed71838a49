// arclens dashboard: draws the index and the latent pages from their inline JSON data.
//
// Every string from the data (task ids, token strings, keys, paths) reaches the page through
// textContent or an attribute set with setAttribute on an element we created: never innerHTML,
// never as markup. Styles are set through the CSSOM (element.style.x), which the page's
// Content-Security-Policy allows, so no inline style or script is needed anywhere.
"use strict";

const PALETTE = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
                 "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"];
const GRID_KINDS = ["train_input", "train_output", "test_input", "answer"];
const KIND_LABELS = {train_input: "train input", train_output: "train output", test_input: "test input",
                     answer: "answer"};
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE_SIZE = 200;

// ---------------------------------------------------------------------------------------------
// small DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  if (x === 0) return "0";
  const d = digits === undefined ? 3 : digits;
  const a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(Math.max(0, d - 1));
  return x.toPrecision(d).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}

function pct(x) {
  return x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%";
}

// A token string as a person can read it: whitespace made visible, control characters named.
function showToken(t) {
  if (t === null || t === undefined) return "∅";
  return String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·")
    .replace(/[\u0000-\u001f\u007f]/g, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}

function readData() {
  return JSON.parse(document.getElementById("arclens-data").textContent);
}

function swatch(colour) {
  const s = el("span", {class: "swatch", title: "colour " + colour});
  s.style.backgroundColor = PALETTE[colour];
  return s;
}

// ---------------------------------------------------------------------------------------------
// charts (inline SVG)

// Horizontal bars: items [{label, value, colour?, note?}], values in [0, 1].
function barChart(items, opts) {
  const o = Object.assign({width: 320, bar: 16, labelWidth: 110, max: 1}, opts || {});
  const h = items.length * (o.bar + 4) + 4;
  const root = svg("svg", {width: o.width, height: h, viewBox: `0 0 ${o.width} ${h}`, class: "chart",
                           role: "img"});
  const span = o.width - o.labelWidth - 60;
  items.forEach((it, i) => {
    const y = 4 + i * (o.bar + 4);
    const v = it.value === null || it.value === undefined ? 0 : it.value;
    root.append(svg("text", {x: o.labelWidth - 6, y: y + o.bar - 4, "text-anchor": "end", class: "label"}, it.label));
    root.append(svg("rect", {x: o.labelWidth, y, width: span, height: o.bar, class: "track"}));
    const bar = svg("rect", {x: o.labelWidth, y, width: Math.max(0, Math.min(1, v / o.max)) * span,
                             height: o.bar, fill: it.colour || "#4a78c2", class: "bar"});
    bar.append(svg("title", {}, `${it.label}: ${pct(it.value)}${it.note ? " — " + it.note : ""}`));
    root.append(bar);
    root.append(svg("text", {x: o.labelWidth + span + 6, y: y + o.bar - 4, class: "value"}, pct(it.value)));
  });
  return root;
}

// Vertical bars for 30 rows / columns.
function columnChart(values, label) {
  const w = 320, h = 90, n = values.length, bw = (w - 30) / n;
  const root = svg("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img"});
  const top = Math.max(1e-12, ...values.map((v) => v || 0));
  values.forEach((v, i) => {
    const bh = ((v || 0) / top) * (h - 24);
    const r = svg("rect", {x: 24 + i * bw, y: h - 14 - bh, width: Math.max(1, bw - 1), height: bh, class: "bar",
                           fill: "#4a78c2"});
    r.append(svg("title", {}, `${label} ${i}: ${pct(v)}`));
    root.append(r);
  });
  root.append(svg("text", {x: 24, y: h - 2, class: "label"}, `${label} 0`));
  root.append(svg("text", {x: w - 4, y: h - 2, "text-anchor": "end", class: "label"}, `${label} ${n - 1}`));
  root.append(svg("text", {x: 2, y: 12, class: "label"}, pct(top)));
  return root;
}

// The log-spaced activation histogram: bins [[low, high, count], ...].
function histogramChart(bins) {
  const w = 520, h = 160, left = 40, bottom = 28;
  const root = svg("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img"});
  if (!bins.length) {
    root.append(svg("text", {x: 10, y: 40, class: "label"}, "never fires"));
    return root;
  }
  const top = Math.max(...bins.map((b) => b[2]));
  const bw = (w - left - 10) / bins.length;
  bins.forEach((b, i) => {
    const bh = (b[2] / top) * (h - bottom - 10);
    const r = svg("rect", {x: left + i * bw, y: h - bottom - bh, width: Math.max(1, bw - 1), height: bh,
                           class: "bar", fill: "#e07b39"});
    r.append(svg("title", {}, `[${fmt(b[0])}, ${fmt(b[1])}): ${b[2]} tokens`));
    root.append(r);
  });
  const ticks = [0, Math.floor(bins.length / 2), bins.length - 1];
  for (const i of new Set(ticks)) {
    root.append(svg("text", {x: left + i * bw, y: h - bottom + 14, class: "label"}, fmt(bins[i][0], 2)));
  }
  root.append(svg("text", {x: w - 10, y: h - 4, "text-anchor": "end", class: "label"},
                  "activation (log-spaced bins)"));
  root.append(svg("text", {x: 2, y: 12, class: "label"}, String(top)));
  return root;
}

function shortToken(t) {
  const s = showToken(t);
  return s.length > 18 ? s.slice(0, 17) + "…" : s;
}

// The logit table: the tokens the decoder direction promotes and suppresses, as diverging bars.
function logitTable(topLogits, bottomLogits) {
  const rows = Math.max(topLogits.length, bottomLogits.length);
  const w = 640, rh = 18, h = rows * rh + 24, mid = w / 2;
  const root = svg("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "chart logits", role: "img"});
  const all = topLogits.concat(bottomLogits).map((p) => Math.abs(p[1]));
  const scale = (mid - 170) / Math.max(1e-12, ...all);
  root.append(svg("text", {x: mid - 6, y: 14, "text-anchor": "end", class: "label head"}, "suppressed"));
  root.append(svg("text", {x: mid + 6, y: 14, class: "label head"}, "promoted"));
  for (let i = 0; i < rows; i++) {
    const y = 22 + i * rh;
    const b = bottomLogits[i], t = topLogits[i];
    if (b) {
      const bw = Math.abs(b[1]) * scale;
      root.append(svg("rect", {x: mid - bw, y, width: bw, height: rh - 4, fill: "#c0504d", class: "bar"}));
      const label = svg("text", {x: mid - bw - 4, y: y + rh - 7, "text-anchor": "end", class: "token"},
                        `${shortToken(b[0])}  ${fmt(b[1])}`);
      label.append(svg("title", {}, `${showToken(b[0])}: ${fmt(b[1])}`));
      root.append(label);
    }
    if (t) {
      const tw = Math.abs(t[1]) * scale;
      root.append(svg("rect", {x: mid, y, width: tw, height: rh - 4, fill: "#4f81bd", class: "bar"}));
      const label = svg("text", {x: mid + tw + 4, y: y + rh - 7, class: "token"}, `${shortToken(t[0])}  ${fmt(t[1])}`);
      label.append(svg("title", {}, `${showToken(t[0])}: ${fmt(t[1])}`));
      root.append(label);
    }
  }
  root.append(svg("line", {x1: mid, x2: mid, y1: 18, y2: h, class: "axis"}));
  return root;
}

// ---------------------------------------------------------------------------------------------
// the index page

const COLUMNS = [
  {key: "latent", label: "latent", num: true},
  {key: "frequency", label: "frequency", num: true, filter: true, fmt: (v) => fmt(v)},
  {key: "mean_act", label: "mean act", num: true, fmt: (v) => fmt(v)},
  {key: "max_act", label: "max act", num: true, fmt: (v) => fmt(v)},
  {key: "cell_share", label: "on cells", num: true, fmt: pct},
  {key: "role_specificity", label: "role specificity", num: true, filter: true, fmt: pct},
  {key: "top_role", label: "top role", fmt: (v) => (v ? KIND_LABELS[v] || v : "—")},
  {key: "colour_specificity", label: "colour specificity", num: true, filter: true, fmt: pct},
  {key: "top_colour", label: "top colour"},
  {key: "consistency", label: "consistency", num: true, filter: true, fmt: pct},
  {key: "best_property", label: "best property"},
  {key: "top_logits", label: "promotes"},
];

function renderIndex(data) {
  const s = data.summary;
  document.title = "arclens dashboard — latents";
  const body = document.body;
  body.append(el("header", {}, el("h1", {text: "arclens features"}),
                 el("p", {class: "meta"}, "SAE ", el("code", {text: s.sae}), ` · ${s.d_sae} latents · `,
                    `${(s.n_tokens || 0).toLocaleString()} tokens · hook `,
                    el("code", {text: (s.sae_config || {}).hook_name}))));
  body.append(coverageSection(data.coverage));

  const state = {sort: "latent", desc: false, shown: PAGE_SIZE, filters: {}, role: "", colour: "", hideDead: false};
  const controls = el("section", {class: "controls", id: "filters"});
  for (const c of COLUMNS.filter((c) => c.filter)) {
    const lo = el("input", {type: "number", step: "any", placeholder: "min", "data-filter": c.key, "data-bound": "min"});
    const hi = el("input", {type: "number", step: "any", placeholder: "max", "data-filter": c.key, "data-bound": "max"});
    for (const inp of [lo, hi]) inp.addEventListener("input", () => {
      const v = inp.value === "" ? null : Number(inp.value);
      state.filters[c.key] = Object.assign(state.filters[c.key] || {}, {[inp.dataset.bound]: v});
      if (c.fmt === pct && v !== null) state.filters[c.key][inp.dataset.bound] = v / 100;
      state.shown = PAGE_SIZE; draw();
    });
    controls.append(el("label", {class: "range"}, c.label + (c.fmt === pct ? " (%)" : ""), lo, hi));
  }
  const role = el("select", {id: "filter-role"}, el("option", {value: "", text: "any top role"}),
                  ...GRID_KINDS.map((k) => el("option", {value: k, text: KIND_LABELS[k]})));
  role.addEventListener("change", () => { state.role = role.value; state.shown = PAGE_SIZE; draw(); });
  const colour = el("select", {id: "filter-colour"}, el("option", {value: "", text: "any top colour"}),
                    ...PALETTE.map((_, c) => el("option", {value: String(c), text: "colour " + c})));
  colour.addEventListener("change", () => { state.colour = colour.value; state.shown = PAGE_SIZE; draw(); });
  const dead = el("input", {type: "checkbox", id: "hide-dead"});
  dead.addEventListener("change", () => { state.hideDead = dead.checked; state.shown = PAGE_SIZE; draw(); });
  controls.append(role, colour, el("label", {}, dead, " hide latents that never fire"));
  body.append(controls);

  const count = el("p", {class: "count", id: "row-count"});
  const thead = el("tr");
  for (const c of COLUMNS) {
    const th = el("th", {"data-key": c.key, class: c.num ? "sortable num" : "", title: c.num ? "sort" : null}, c.label);
    if (c.num) th.addEventListener("click", () => {
      state.desc = state.sort === c.key ? !state.desc : c.key !== "latent";
      state.sort = c.key; draw();
    });
    thead.append(th);
  }
  const tbody = el("tbody", {id: "latent-rows"});
  const more = el("button", {id: "more", type: "button"}, "show more");
  more.addEventListener("click", () => { state.shown += PAGE_SIZE; draw(); });
  body.append(count, el("table", {class: "latents", id: "latents"}, el("thead", {}, thead), tbody), more);

  function keep(r) {
    if (state.hideDead && !r.n_fires) return false;
    if (state.role && r.top_role !== state.role) return false;
    if (state.colour !== "" && r.top_colour !== Number(state.colour)) return false;
    for (const [k, b] of Object.entries(state.filters)) {
      const v = r[k];
      if ((b.min !== null && b.min !== undefined) || (b.max !== null && b.max !== undefined)) {
        if (v === null || v === undefined) return false;
        if (b.min !== null && b.min !== undefined && v < b.min) return false;
        if (b.max !== null && b.max !== undefined && v > b.max) return false;
      }
    }
    return true;
  }

  function draw() {
    const rows = data.rows.filter(keep);
    const k = state.sort, sign = state.desc ? -1 : 1;
    rows.sort((a, b) => {
      const x = a[k], y = b[k];
      const xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn && yn ? a.latent - b.latent : xn ? 1 : -1;  // nulls last either way
      return x === y ? a.latent - b.latent : (x < y ? -sign : sign);
    });
    for (const th of thead.children) {
      th.classList.toggle("sorted", th.dataset.key === k);
      th.dataset.dir = th.dataset.key === k ? (state.desc ? "desc" : "asc") : "";
    }
    tbody.replaceChildren(...rows.slice(0, state.shown).map(indexRow));
    count.textContent = `${rows.length} of ${data.rows.length} latents` +
      (rows.length > state.shown ? ` (first ${state.shown} shown)` : "");
    more.hidden = rows.length <= state.shown;
  }
  draw();
  body.dataset.ready = "1";
}

function indexRow(r) {
  const tr = el("tr", {"data-latent": r.latent});
  for (const c of COLUMNS) {
    const v = r[c.key];
    const td = el("td", {class: c.num ? "num" : "", "data-key": c.key});
    if (c.key === "latent") td.append(el("a", {href: `latents/${Number(r.latent)}.html`, text: r.latent}));
    else if (c.key === "top_colour") td.append(...(v === null || v === undefined ? ["—"] : [swatch(v), " " + v]));
    else if (c.key === "best_property") td.textContent = v ? `${v.name} (F1 ${fmt(v.f1, 2)})` : "—";
    else if (c.key === "top_logits") td.append(...(v || []).map((t) => el("span", {class: "tok", text: showToken(t)})));
    else td.textContent = c.fmt ? c.fmt(v) : (v === null || v === undefined ? "—" : String(v));
    if (c.num && v !== null && v !== undefined) td.dataset.value = String(v);
    tr.append(td);
  }
  return tr;
}

function coverageSection(cov) {
  const sec = el("section", {class: "coverage", id: "coverage"});
  if (!cov || !cov.properties) return sec;
  sec.append(el("h2", {}, `ARC-property coverage: ${fmt(cov.mean, 3)} (mean best-latent F1)`));
  const fam = cov.family_means || {};
  sec.append(el("p", {class: "meta"}, Object.entries(fam).map(([k, v]) => `${k} ${fmt(v, 2)}`).join(" · ")));
  const best = Object.entries(cov.properties).sort((a, b) => (b[1].f1 || 0) - (a[1].f1 || 0)).slice(0, 12);
  const tbl = el("table", {class: "small"}, el("tr", {}, el("th", {text: "property"}), el("th", {text: "latent"}),
                                             el("th", {text: "F1"})));
  for (const [name, p] of best) {
    tbl.append(el("tr", {}, el("td", {text: name}),
                  el("td", {}, el("a", {href: `latents/${Number(p.latent)}.html`, text: p.latent})),
                  el("td", {class: "num", text: fmt(p.f1, 3)})));
  }
  sec.append(el("details", {}, el("summary", {text: "best-covered properties"}), tbl));
  return sec;
}

// ---------------------------------------------------------------------------------------------
// samples: loaded on demand from ../samples/<N>.js, each calling arclensSample(N, data)

const sampleWaiters = new Map();
window.arclensSample = function (number, data) {
  const w = sampleWaiters.get(number);
  if (w) w.resolve(data);
};

function loadSample(root, number) {
  if (!Number.isInteger(number)) return Promise.reject(new Error("bad sample number"));
  if (!sampleWaiters.has(number)) {
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    sampleWaiters.set(number, {promise, resolve, reject});
    const s = document.createElement("script");
    s.src = `${root}samples/${number}.js`;
    s.onerror = () => reject(new Error(`sample file ${number}.js is missing`));
    document.head.append(s);
  }
  return sampleWaiters.get(number).promise;
}

// ---------------------------------------------------------------------------------------------
// grids: every grid of the sample, each cell its ARC colour, outlined by this latent's activation

function drawGrids(sample, ex, maxAct) {
  const acts = new Map();
  for (const [g, r, c, a] of ex.cells || []) acts.set(`${g},${r},${c}`, a);
  const focus = ex.cell ? ex.cell.join(",") : null;
  const wrap = el("div", {class: "grids"});
  for (const g of sample.grids) {
    const h = g.height, w = g.width;
    const size = Math.max(5, Math.min(16, Math.floor(180 / Math.max(h, w))));
    const grid = el("div", {class: "grid", "data-grid": g.grid, "data-kind": g.kind});
    grid.style.gridTemplateColumns = `repeat(${w}, ${size}px)`;
    grid.style.gridAutoRows = `${size}px`;
    g.cells.forEach((row, r) => row.forEach((colour, c) => {
      const key = `${g.grid},${r},${c}`;
      const a = acts.get(key) || 0;
      const cell = el("div", {class: "cell", "data-colour": colour, "data-row": r, "data-col": c,
                              title: `row ${r}, col ${c}, colour ${colour}` +
                              (a ? `, activation ${fmt(a)}` : "")});
      cell.style.backgroundColor = PALETTE[colour];
      if (a > 0) {
        const f = maxAct > 0 ? Math.min(1, a / maxAct) : 1;
        cell.classList.add("fires");
        cell.dataset.act = String(a);
        cell.style.boxShadow = `inset 0 0 0 ${Math.max(1, Math.round(f * size * 0.35))}px rgba(255,255,255,${0.35 + 0.65 * f})`;
      }
      if (key === focus) cell.classList.add("focus");
      grid.append(cell);
    }));
    const label = el("div", {class: "grid-label"}, el("span", {class: "role role-" + g.kind, text: g.label}),
                     ` ${h}×${w}`);
    wrap.append(el("figure", {class: "grid-box" + (g.kind === "answer" ? " answer" : "")}, label, grid));
  }
  return wrap;
}

function contextLine(ctx, ex, maxAct) {
  const line = el("div", {class: "context"});
  if (!ctx) return line;
  const tokens = ctx.tokens || ctx.token_ids.map((i) => `#${i}`);
  tokens.forEach((t, i) => {
    const a = ctx.acts[i] || 0;
    const span = el("span", {class: "ctx-tok", title: `position ${ctx.positions[i]}: activation ${fmt(a)}`,
                             text: showToken(t)});
    if (a > 0) span.style.backgroundColor = `rgba(224,123,57,${0.15 + 0.85 * Math.min(1, a / (maxAct || a))})`;
    if (ctx.positions[i] === ex.position) span.classList.add("focus");
    line.append(span);
  });
  return line;
}

function exampleCard(ex, maxAct, root, eager) {
  const card = el("article", {class: "example", "data-kind": ex.kind, "data-rank": ex.rank,
                              "data-sample": ex.sample, "data-key": ex.key, "data-position": ex.position});
  const where = ex.cell ? `cell row ${ex.cell[1]}, col ${ex.cell[2]} of grid ${ex.cell[0]}` : "not a cell";
  card.append(el("h4", {}, el("span", {class: "act", text: fmt(ex.activation)}), " on token ",
                 el("code", {class: "tok", text: showToken(ex.token)}), ` (${where}) · task `,
                 el("code", {class: "task-id", text: String(ex.key).split("/").slice(0, -2).join("/")}),
                 " · sample ", el("code", {class: "key", text: ex.key}), ` · position ${ex.position}`));
  card.append(contextLine(ex.context, ex, maxAct));
  const body = el("div", {class: "example-grids", text: "…"});
  card.append(body);
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    loadSample(root, ex.sample).then((sample) => {
      const taskId = card.querySelector(".task-id");
      taskId.textContent = sample.task_id;
      const aug = sample.augmentation || {};
      body.replaceChildren(el("p", {class: "aug", text: `augmentation: hflip ${aug.hflip}, rot90 ×${aug.rot90}, ` +
                                    `colours ${JSON.stringify(aug.color_map)}, train order ${JSON.stringify(aug.train_order)}`}),
                           drawGrids(sample, ex, maxAct));
      card.dataset.ready = "1";
    }, (err) => { body.textContent = String(err.message); card.dataset.ready = "error"; });
  };
  if (eager || !("IntersectionObserver" in window)) start();
  else {
    const obs = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) { obs.disconnect(); start(); }
    }, {rootMargin: "400px"});
    obs.observe(card);
  }
  return card;
}

// ---------------------------------------------------------------------------------------------
// a latent page

function renderLatent(data) {
  const r = data.row, root = document.body.dataset.root || "../";
  document.title = `latent ${Number(data.latent)} — arclens dashboard`;
  const nav = el("nav", {}, el("a", {href: "../index.html", text: "← all latents"}));
  if (data.prev !== null) nav.append(" · ", el("a", {href: `${Number(data.prev)}.html`, text: `latent ${data.prev}`}));
  if (data.next !== null) nav.append(" · ", el("a", {href: `${Number(data.next)}.html`, text: `latent ${data.next}`}));
  document.body.append(nav, el("h1", {text: `latent ${data.latent}`}));
  const stats = el("dl", {class: "stats"});
  const add = (k, v) => stats.append(el("dt", {text: k}), el("dd", {text: v}));
  add("frequency", `${fmt(r.frequency)} (${r.n_fires} tokens)`);
  add("mean / max activation", `${fmt(r.mean_act)} / ${fmt(r.max_act)}`);
  add("mass on grid cells", pct(r.cell_share));
  add("role specificity", pct(r.role_specificity));
  add("colour specificity", pct(r.colour_specificity));
  add("augmentation consistency", `${pct(r.consistency)} over ${r.consistency_cells || 0} cells`);
  add("border / interior", r.border_share === null ? "—" : `${pct(r.border_share)} / ${pct(1 - r.border_share)}`);
  if (r.best_property) add("best property", `${r.best_property.name} (F1 ${fmt(r.best_property.f1)})`);
  document.body.append(stats);

  const charts = el("section", {class: "charts"});
  charts.append(el("figure", {}, el("figcaption", {text: "activation histogram"}), histogramChart(data.histogram)));
  if (r.grid_kind_share) {
    const base = (data.summary.base_rates || {}).grid_kind || {};
    const baseTotal = GRID_KINDS.reduce((s, k) => s + (base[k] || 0), 0);
    charts.append(el("figure", {}, el("figcaption", {text: "cell mass by grid role"}),
      barChart(GRID_KINDS.map((k) => ({label: KIND_LABELS[k], value: r.grid_kind_share[k],
        note: baseTotal ? `base rate ${pct((base[k] || 0) / baseTotal)}` : ""})))));
  }
  if (r.colour_share) {
    charts.append(el("figure", {}, el("figcaption", {text: "cell mass by original colour"}),
      barChart(r.colour_share.map((v, c) => ({label: `colour ${c}`, value: v, colour: PALETTE[c]})),
               {bar: 12})));
  }
  if (r.row_share) charts.append(el("figure", {}, el("figcaption", {text: "cell mass by row"}), columnChart(r.row_share, "row")));
  if (r.col_share) charts.append(el("figure", {}, el("figcaption", {text: "cell mass by column"}), columnChart(r.col_share, "col")));
  if (r.top_logits || r.bottom_logits) {
    charts.append(el("figure", {class: "wide"}, el("figcaption", {text: "logit effect (decoder direction through the unembedding)"}),
      logitTable(r.top_logits || [], r.bottom_logits || [])));
  }
  document.body.append(charts);

  const maxAct = r.max_act || 0;
  const top = data.examples.filter((e) => e.kind === "top");
  const quant = data.examples.filter((e) => e.kind === "quantile");
  const exSec = el("section", {class: "examples", id: "examples"});
  exSec.append(el("h2", {text: `top activations (${top.length})`}),
               el("p", {class: "legend", text: "Each cell shows its colour as the model saw it; a white inner border " +
                        "marks the latent firing there, thicker and brighter for a larger activation (relative to " +
                        "the latent's maximum); the dashed outline is the example's token."}));
  top.forEach((ex, i) => exSec.append(exampleCard(ex, maxAct, root, i === 0)));
  if (quant.length) {
    exSec.append(el("h2", {text: "quantile intervals"}));
    let current = null;
    for (const ex of quant) {
      const iv = ex.interval || {};
      if (iv.index !== current) {
        current = iv.index;
        exSec.append(el("h3", {text: `[${fmt(iv.low)}, ${fmt(iv.high)}): ${pct(iv.share)} of firings`}));
      }
      exSec.append(exampleCard(ex, maxAct, root, top.length === 0 && ex === quant[0]));
    }
  }
  if (!data.examples.length) exSec.append(el("p", {text: "This latent never fires on the source."}));
  document.body.append(exSec);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  const data = readData();
  if (document.body.dataset.page === "index") renderIndex(data);
  else renderLatent(data);
});
