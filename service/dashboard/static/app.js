// scanlens dashboard page: plain JavaScript drawing on <canvas>; no build step, nothing loaded from elsewhere.
//
// The dashboard process sends binary frames over one websocket: [u32 n][n bytes JSON header][arrays, 8-aligned]
// (service/dashboard/wire.py). Each frame carries only what this page has not seen: the rows of the shown scan
// changed since the last frame (all of them after a switch or a reconnect), the latest movie frame, new
// events. Once the page has taken a frame in it says {"ack": n}; the next frame comes only then, and at most
// max_rate_hz per second. Drawing follows in the next animation frame: frames that arrive faster than the
// page draws are merged, never queued. {"select": id} switches scans.
"use strict";

const dash = window.__dash = {
  frames: 0, bytes: 0, redraws: 0, mapsDrawn: 0, rowsFilled: 0, row0: false, selected: null,
  movieFrame: null, atomsDrawn: 0, defectsDrawn: 0, tracksDrawn: 0, errors: 0, lastError: null,
};
Object.defineProperty(window, "__redraws", { get: () => dash.redraws });

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};
const fmt = (v, digits = 3) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
};
const unitText = (u) => (!u || u === "1") ? "" : u.replace("k_BT", "kBT").replace("nm2", "nm²");

// ------------------------------------------------------------------ colour maps

const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
  [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
const LUT = new Uint8Array(256 * 3);
for (let i = 0; i < 256; i++) {
  const t = i / 255 * (VIRIDIS.length - 1), k = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - k;
  for (let c = 0; c < 3; c++) LUT[i * 3 + c] = Math.round(VIRIDIS[k][c] * (1 - f) + VIRIDIS[k + 1][c] * f);
}
const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [188, 189, 34], [23, 190, 207], [127, 127, 127]];
const SEG_PALETTE = [[20, 22, 26], [90, 160, 255], [255, 190, 60], [240, 70, 60], [230, 110, 220], [80, 220, 120],
  [250, 250, 250], [150, 150, 150]];
const ATOM_PALETTE = [[120, 190, 255], [255, 214, 102], [120, 255, 160], [255, 255, 255]];
const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
const trackColour = (t) => `hsl(${(t * 137.508) % 360}, 85%, 62%)`;

// ------------------------------------------------------------------ physical units

function niceLength(target) {
  const p = Math.pow(10, Math.floor(Math.log10(target)));
  for (const m of [5, 2, 1]) if (m * p <= target) return m * p;
  return p;
}

// a scale bar of up to about half the width, in the calibration's units (scan_step or pixel_size)
function drawScaleBar(ctx, dispW, dispH, cols, step) {
  if (!step || !(step.size > 0)) return;
  const pxPerUnit = dispW / (cols * step.size);
  const len = niceLength(cols * step.size * 0.45);
  const w = len * pxPerUnit;
  if (w < 8) return;
  const x = 6, y = dispH - 8;
  ctx.fillStyle = "rgba(0,0,0,0.55)";
  ctx.fillRect(x - 3, y - 14, Math.max(w, 34) + 6, 19);
  ctx.fillStyle = "#fff";
  ctx.fillRect(x, y, w, 3);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(`${fmt(len)} ${step.units}`, x, y - 3);
}

// ------------------------------------------------------------------ state

let ws = null;
let follow = true;
let selected = null;
let view = null;          // the shown scan (built from scan_started)
let cursor = null;        // {row, col} under the mouse
let needDraw = false, newData = false, drawScheduled = false;
let scansList = [];
let lastFrame = 0;
let lastStatus = null;
const eventsShown = [];

function parseHash() {
  const m = location.hash.match(/scan=([^&]+)/);
  if (m) { selected = decodeURIComponent(m[1]); follow = false; $("follow").checked = false; }
}

function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }

function select(id, byUser) {
  if (byUser) { follow = false; $("follow").checked = false; history.replaceState(null, "", `#scan=${encodeURIComponent(id)}`); }
  if (id === selected) return;
  selected = id;
  dash.selected = id;
  view = null;
  cursor = null;
  $("scan-body").replaceChildren();
  $("readout").replaceChildren("Move the cursor over a map.");
  send({ select: id });
  renderScanList();
}

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { view = null; $("scan-body").replaceChildren(); if (selected) send({ select: selected }); };
  ws.onmessage = (ev) => {
    try { onFrame(ev.data); } catch (e) { dash.errors++; dash.lastError = String(e.stack || e); console.error(e); }
    send({ ack: lastFrame });  // taken in: the next frame may come (a busy page gets here later, so fewer)
    scheduleDraw();
  };
  ws.onclose = () => { setConn(false, "dashboard connection lost: reconnecting…"); setTimeout(connect, 1000); };
}

function scheduleDraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    try { draw(); } catch (e) { dash.errors++; dash.lastError = String(e.stack || e); console.error(e); }
  });
}

function setConn(on, text) {
  const c = $("conn");
  c.className = `badge ${on ? "on" : "off"}`;
  c.textContent = text;
}

// ------------------------------------------------------------------ frames

function onFrame(buf) {
  dash.frames++;
  dash.bytes += buf.byteLength;
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  lastFrame = h.frame;  // numbered 1, 2, ... on this connection: the ack names it
  const arrays = {};
  for (const a of h.arrays) {
    arrays[a.name] = a.dtype === "uint8" ? new Uint8Array(buf, a.offset, a.nbytes)
      : new Float32Array(buf, a.offset, a.nbytes / 4);
    arrays[a.name].shape = a.shape;
  }
  const s = h.service;
  setConn(s.connected, s.connected ? "service connected" : "no heartbeat from the service");
  $("service").textContent = `publish ${s.publish} · control ${s.control}` +
    (h.status ? ` · scanlens ${h.status.version} · up ${fmt(h.status.uptime_s, 4)} s` : "");
  $("rate").textContent = `≤ ${h.max_rate_hz} updates/s`;
  lastStatus = h.status;
  scansList = h.scans;
  for (const e of h.events) eventsShown.push(e);
  if (eventsShown.length > 200) eventsShown.splice(0, eventsShown.length - 200);
  if (follow && scansList.length) {
    const open = scansList.filter((x) => x.state === "open");
    const newest = (open.length ? open : scansList).reduce((a, b) => (b.t_started >= a.t_started ? b : a));
    if (newest.id !== selected) select(newest.id, false);
  }
  if (h.scan && h.scan.id === selected) applyScan(h.scan, arrays);
  needDraw = true;
}

function applyScan(scan, arrays) {
  if (scan.full || !view || view.id !== scan.id) {
    if (!scan.started) return;  // a partial frame of a scan we have not built: the full one follows
    view = scan.started.pixel_size ? buildMovie(scan) : buildSpectral(scan);
  }
  view.messages = scan.messages;
  view.open = scan.open;
  view.recovered = scan.recovered;
  if ("summary" in scan) view.summary = scan.summary;
  if (scan.hist) view.hist = scan.hist;
  if (scan.rows) { applyRows(view, scan.rows, arrays); newData = true; }
  if (scan.frames) { applyMovie(view, scan.frames, arrays); newData = true; }
}

// ------------------------------------------------------------------ spectral scans: maps

function mapsOf(started) {
  // one map per per-pixel value: outputs of shape [] give one, [k] give k (one per label)
  const maps = [];
  const hasClass = (rec) => (started.outputs[rec] || []).some((s) => s.name === "class");
  const recs = started.recognizers.slice().sort((a, b) => hasClass(b) - hasClass(a));
  for (const rec of recs) {
    for (const spec of started.outputs[rec] || []) {
      const shape = spec.shape || [];
      if (shape.length > 1) continue;
      const per = shape.length ? shape[0] : 1;
      for (let i = 0; i < per; i++) {
        let kind = "continuous", lo = Infinity, hi = -Infinity, fixed = false, units = spec.units ? spec.units[i] : "";
        if (spec.name === "class") kind = "class";
        else if (spec.name === "novel") kind = "binary";
        if (spec.name === "confidence") { fixed = true; lo = 0; hi = 1; units = units || "probability"; }
        if (units === "fraction") { fixed = true; lo = 0; hi = 1; }
        const label = spec.labels && per > 1 ? spec.labels[i] : null;
        maps.push({ rec, name: spec.name, key: `${rec}/${spec.name}`, comp: i, per, kind, labels: spec.labels || [],
          label, units, lo, hi, fixed });
      }
    }
  }
  return maps;
}

function buildSpectral(scan) {
  const st = scan.started, [rows, cols] = st.shape;
  const v = { id: st.scan_id, started: st, rows, cols, imaging: false, maps: mapsOf(st), data: {}, filled: {},
    rowFilled: new Uint8Array(rows), nRowsFilled: 0, dirty: null, edges: scan.hist_edges_ms };
  for (const rec of st.recognizers) {
    v.filled[rec] = new Uint8Array(rows * cols);
    for (const spec of st.outputs[rec] || []) {
      const per = (spec.shape || []).reduce((a, b) => a * b, 1);
      v.data[`${rec}/${spec.name}`] = spec.dtype === "uint8" ? new Uint8Array(rows * cols * per)
        : new Float32Array(rows * cols * per);
    }
  }
  // display size: fit the scan's aspect into a box, never below 1 px per scan pixel... unless it is large
  const boxW = 200, boxH = 220;
  const scale = Math.min(boxW / cols, boxH / rows, 4);
  v.dispW = Math.max(24, Math.round(cols * scale));
  v.dispH = Math.max(24, Math.round(rows * scale));
  const body = $("scan-body");
  body.replaceChildren();
  let current = null, cards = null;
  for (const m of v.maps) {
    if (m.rec !== current) {
      current = m.rec;
      cards = el("div", { class: "cards" });
      const title = m.rec === "pca" ? "pca — PCA scores" : m.rec;
      body.append(el("div", { class: "rec" }, el("h3", {}, title), cards));
    }
    m.off = document.createElement("canvas");
    m.off.width = cols; m.off.height = rows;
    m.offCtx = m.off.getContext("2d");
    m.img = m.offCtx.createImageData(cols, rows);
    m.canvas = el("canvas", { class: "map", width: v.dispW, height: v.dispH });
    m.ctx = m.canvas.getContext("2d");
    m.ctx.imageSmoothingEnabled = false;
    const title = `${m.name}${m.label ? " · " + m.label : ""}`;
    const card = el("div", { class: "card" }, el("div", { class: "title" }, title));
    const row = el("div", { class: "row" }, m.canvas);
    if (m.kind === "continuous") {
      const cbar = el("canvas", { width: 10, height: v.dispH });
      const g = cbar.getContext("2d"), grad = g.createLinearGradient(0, v.dispH, 0, 0);
      for (let i = 0; i <= 10; i++) { const k = Math.round(i * 25.5); grad.addColorStop(i / 10, `rgb(${LUT[k * 3]},${LUT[k * 3 + 1]},${LUT[k * 3 + 2]})`); }
      g.fillStyle = grad; g.fillRect(0, 0, 10, v.dispH);
      m.hiLabel = el("span", {}, ""); m.loLabel = el("span", {}, "");
      row.append(cbar, el("div", { class: "cbar-wrap" }, el("div", { class: "lbl", style: `height:${v.dispH}px` }, m.hiLabel, m.loLabel)));
      card.append(row, el("div", { class: "legend" }, unitText(m.units) || (m.units === "1" ? "dimensionless" : "")));
    } else if (m.kind === "class") {
      card.append(row, el("div", { class: "legend" }, ...m.labels.map((l, i) =>
        el("span", {}, el("i", { style: `background:${rgb(PALETTE[i % PALETTE.length])}` }), l))));
    } else {
      card.append(row, el("div", { class: "legend" }, el("span", {}, el("i", { style: "background:#f0533b" }), "novel"),
        el("span", {}, el("i", { style: "background:#2a3b4d" }), "vouched")));
    }
    const step = st.scan_step;
    card.append(el("div", { class: "extent" }, step ? `${fmt(cols * step.size)} × ${fmt(rows * step.size)} ${step.units}`
      : `${cols} × ${rows} px (no scan_step)`));
    cards.append(card);
    m.canvas.addEventListener("mousemove", (ev) => {
      const r = m.canvas.getBoundingClientRect();
      cursor = { col: Math.min(cols - 1, Math.floor((ev.clientX - r.left) / r.width * cols)),
        row: Math.min(rows - 1, Math.floor((ev.clientY - r.top) / r.height * rows)) };
      needDraw = true; scheduleDraw();
    });
  }
  renderHead(v);
  return v;
}

function applyRows(v, [r0, r1], arrays) {
  const cols = v.cols;
  for (const rec of v.started.recognizers) {
    const f = arrays[`${rec}/filled`];
    if (f) v.filled[rec].set(f, r0 * cols);
    for (const spec of v.started.outputs[rec] || []) {
      const a = arrays[`${rec}/${spec.name}`];
      if (!a) continue;
      const per = (spec.shape || []).reduce((x, y) => x * y, 1);
      v.data[`${rec}/${spec.name}`].set(a, r0 * cols * per);
    }
  }
  for (let r = r0; r < r1; r++) {
    let any = 0;
    for (const rec of v.started.recognizers) {
      const f = v.filled[rec];
      for (let c = 0; c < cols && !any; c++) any = f[r * cols + c];
    }
    if (any && !v.rowFilled[r]) v.nRowsFilled++;
    if (!any && v.rowFilled[r]) v.nRowsFilled--;
    v.rowFilled[r] = any ? 1 : 0;
  }
  v.dirty = v.dirty ? [Math.min(v.dirty[0], r0), Math.max(v.dirty[1], r1)] : [r0, r1];
}

function colourRows(v, m, r0, r1) {
  const { cols } = v, data = v.data[m.key], filled = v.filled[m.rec], px = m.img.data;
  for (let r = r0; r < r1; r++) {
    for (let c = 0; c < cols; c++) {
      const p = r * cols + c, o = p * 4;
      if (!filled[p]) { px[o] = 12; px[o + 1] = 14; px[o + 2] = 17; px[o + 3] = 255; continue; }
      const x = data[p * m.per + m.comp];
      let col;
      if (m.kind === "class") col = PALETTE[x % PALETTE.length];
      else if (m.kind === "binary") col = x ? [240, 83, 59] : [42, 59, 77];
      else {
        const t = m.hi > m.lo ? (x - m.lo) / (m.hi - m.lo) : 0.5;
        const k = Number.isFinite(t) ? Math.max(0, Math.min(255, Math.round(t * 255))) : 0;
        px[o] = LUT[k * 3]; px[o + 1] = LUT[k * 3 + 1]; px[o + 2] = LUT[k * 3 + 2]; px[o + 3] = 255;
        continue;
      }
      px[o] = col[0]; px[o + 1] = col[1]; px[o + 2] = col[2]; px[o + 3] = 255;
    }
  }
}

function drawSpectral(v) {
  let drawn = 0;
  if (v.dirty) {
    const [r0, r1] = v.dirty;
    for (const m of v.maps) {
      let all = false;
      if (m.kind === "continuous" && !m.fixed) {  // colour range grows with the data; a new range recolours all
        const data = v.data[m.key], filled = v.filled[m.rec];
        let lo = m.lo, hi = m.hi;
        for (let p = r0 * v.cols; p < r1 * v.cols; p++) {
          if (!filled[p]) continue;
          const x = data[p * m.per + m.comp];
          if (x < lo) lo = x;
          if (x > hi) hi = x;
        }
        if (lo !== m.lo || hi !== m.hi) { m.lo = lo; m.hi = hi; all = true; }
      }
      if (all) colourRows(v, m, 0, v.rows); else colourRows(v, m, r0, r1);
      m.offCtx.putImageData(m.img, 0, 0, 0, all ? 0 : r0, v.cols, all ? v.rows : r1 - r0);
      if (m.hiLabel) { m.hiLabel.textContent = fmt(m.hi); m.loLabel.textContent = fmt(m.lo); }
    }
    v.dirty = null;
  }
  for (const m of v.maps) {
    m.ctx.imageSmoothingEnabled = false;
    m.ctx.drawImage(m.off, 0, 0, v.dispW, v.dispH);
    drawScaleBar(m.ctx, v.dispW, v.dispH, v.cols, v.started.scan_step);
    if (cursor) {
      const x = (cursor.col + 0.5) * v.dispW / v.cols, y = (cursor.row + 0.5) * v.dispH / v.rows;
      m.ctx.strokeStyle = "rgba(255,255,255,0.9)"; m.ctx.lineWidth = 1;
      m.ctx.beginPath(); m.ctx.moveTo(x - 6, y); m.ctx.lineTo(x + 6, y); m.ctx.moveTo(x, y - 6); m.ctx.lineTo(x, y + 6); m.ctx.stroke();
    }
    drawn++;
  }
  dash.mapsDrawn = drawn;
  dash.rowsFilled = v.nRowsFilled;
  dash.row0 = !!v.rowFilled[0];
}

function readoutSpectral(v) {
  if (!cursor) return;
  const { row, col } = cursor, p = row * v.cols + col, step = v.started.scan_step;
  const where = step ? ` — x ${fmt(col * step.size)} ${step.units}, y ${fmt(row * step.size)} ${step.units}` : "";
  const t = el("table");
  for (const rec of v.started.recognizers) {
    const ok = v.filled[rec][p];
    t.append(el("tr", {}, el("td", { colspan: "2" }, el("b", {}, rec), ok ? "" : " (not recognized yet)")));
    if (!ok) continue;
    for (const spec of v.started.outputs[rec] || []) {
      const per = (spec.shape || []).reduce((a, b) => a * b, 1), d = v.data[`${rec}/${spec.name}`];
      let text;
      if (spec.name === "class") text = spec.labels ? spec.labels[d[p]] : String(d[p]);
      else if (spec.name === "novel") text = d[p] ? "yes — not vouched for" : "no";
      else if (per === 1) text = `${fmt(d[p])} ${unitText(spec.units && spec.units[0])}`;
      else text = Array.from({ length: per }, (_, i) =>
        `${spec.labels ? spec.labels[i] : i} ${fmt(d[p * per + i])}${unitText(spec.units && spec.units[i]) ? " " + unitText(spec.units[i]) : ""}`).join(", ");
      t.append(el("tr", {}, el("td", {}, spec.name), el("td", {}, text)));
    }
  }
  $("readout").replaceChildren(el("div", {}, `row ${row}, col ${col}${where}`), t);
}

// ------------------------------------------------------------------ movies: frames, atoms, defects, tracks

function buildMovie(scan) {
  const st = scan.started, [h, w] = st.shape;
  const v = { id: st.scan_id, started: st, rows: h, cols: w, imaging: true, recs: {}, tracks: null, edges: scan.hist_edges_ms };
  const scale = Math.min(520 / w, 520 / h, 4);
  v.dispW = Math.round(w * scale); v.dispH = Math.round(h * scale);
  const body = $("scan-body");
  body.replaceChildren();
  for (const rec of st.recognizers) {
    const r = { rec, canvas: el("canvas", { class: "frame", width: v.dispW, height: v.dispH }), off: document.createElement("canvas"),
      legend: el("div", { class: "legend" }), info: el("div", { class: "tracking" }), latest: null };
    r.off.width = w; r.off.height = h;
    r.offCtx = r.off.getContext("2d");
    r.img = r.offCtx.createImageData(w, h);
    r.ctx = r.canvas.getContext("2d");
    const step = st.pixel_size;
    body.append(el("div", { class: "rec" }, el("h3", {}, `${rec} — frames with atoms, defects and tracks`),
      el("div", { class: "movie" }, el("div", { class: "card" }, r.canvas, r.legend,
        el("div", { class: "extent" }, step ? `${fmt(w * step.size)} × ${fmt(h * step.size)} ${step.units}` : "")), r.info)));
    r.canvas.addEventListener("mousemove", (ev) => {
      const b = r.canvas.getBoundingClientRect();
      cursor = { col: Math.min(w - 1, Math.floor((ev.clientX - b.left) / b.width * w)),
        row: Math.min(h - 1, Math.floor((ev.clientY - b.top) / b.height * h)), rec };
      needDraw = true; scheduleDraw();
    });
    v.recs[rec] = r;
  }
  renderHead(v);
  return v;
}

function applyMovie(v, frames, arrays) {
  for (const [rec, f] of Object.entries(frames)) {
    const r = v.recs[rec];
    if (!r) continue;
    const spec = Object.fromEntries((f.specs || []).map((s) => [s.name, s]));
    r.latest = { ...f, spec, classes: arrays[`${rec}/classes`], atoms: arrays[`${rec}/atoms`], defects: arrays[`${rec}/defects`] };
    r.dirty = true;
  }
  v.tracks = arrays.tracks || v.tracks;
}

function classNames(spec, col) {
  const u = spec && spec.units && spec.units[col];
  return u ? u.split(",") : [];
}

function drawMovie(v) {
  const step = v.started.pixel_size;
  for (const r of Object.values(v.recs)) {
    const f = r.latest;
    if (!f || !f.classes) continue;
    const sx = v.dispW / v.cols, sy = v.dispH / v.rows;
    if (r.dirty) {
      const px = r.img.data, cls = f.classes;
      for (let p = 0; p < cls.length; p++) {  // dimmed, so that atoms, defects and tracks stand out on it
        const c = SEG_PALETTE[cls[p] % SEG_PALETTE.length], o = p * 4;
        px[o] = c[0] * 0.55; px[o + 1] = c[1] * 0.55; px[o + 2] = c[2] * 0.55; px[o + 3] = 255;
      }
      r.offCtx.putImageData(r.img, 0, 0);
      const seg = (f.spec.classes && f.spec.classes.labels) || [];
      const atomNames = classNames(f.spec.atoms, 2), defectNames = classNames(f.spec.defects, 2);
      r.legend.replaceChildren(
        el("div", {}, "segmentation (dimmed): ", ...seg.map((l, i) => el("span", {}, el("i", { style: `background:${rgb(SEG_PALETTE[i % SEG_PALETTE.length].map((x) => x * 0.55))}` }), l))),
        el("div", {}, "atoms (dots): ", ...atomNames.map((l, i) => el("span", {}, el("i", { style: `background:${rgb(ATOM_PALETTE[i % ATOM_PALETTE.length])};border-radius:50%` }), l))),
        el("div", {}, "defects (rings, track id): ", ...defectNames.map((l, i) => el("span", {}, el("i", { style: `border:2px solid ${rgb(PALETTE[(i + 4) % PALETTE.length])};background:none` }), l))),
        el("div", {}, "tracks: lines of each defect's last positions"));
      renderTracking(r, f, defectNames);
      r.dirty = false;
    }
    const ctx = r.ctx;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(r.off, 0, 0, v.dispW, v.dispH);
    let atoms = 0, defects = 0, tracks = 0;
    if (f.atoms) {
      ctx.strokeStyle = "rgba(0,0,0,0.8)"; ctx.lineWidth = 1;
      for (let i = 0; i + 2 < f.atoms.length; i += 3) {
        ctx.fillStyle = rgb(ATOM_PALETTE[f.atoms[i + 2] % ATOM_PALETTE.length]);
        ctx.beginPath(); ctx.arc((f.atoms[i] + 0.5) * sx, (f.atoms[i + 1] + 0.5) * sy, Math.max(2, sx * 1.3), 0, 2 * Math.PI);
        ctx.fill(); ctx.stroke();
        atoms++;
      }
    }
    if (v.tracks && v.tracks.length) {  // [track, frame, x, y, class] rows, grouped by track
      const t = v.tracks;
      ctx.lineWidth = 1.5;
      for (let i = 0; i < t.length;) {
        const id = t[i];
        ctx.strokeStyle = trackColour(id);
        ctx.beginPath();
        let n = 0;
        for (; i < t.length && t[i] === id; i += 5, n++) {
          const x = (t[i + 2] + 0.5) * sx, y = (t[i + 3] + 0.5) * sy;
          if (n === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        }
        ctx.stroke();
        tracks++;
      }
    }
    if (f.defects) {
      ctx.font = "10px system-ui, sans-serif";
      for (let i = 0; i + 4 < f.defects.length; i += 5) {
        const x = (f.defects[i] + 0.5) * sx, y = (f.defects[i + 1] + 0.5) * sy;
        ctx.strokeStyle = rgb(PALETTE[(f.defects[i + 2] + 4) % PALETTE.length]);
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(x, y, Math.max(6, 4 * sx), 0, 2 * Math.PI); ctx.stroke();
        ctx.fillStyle = "#fff";
        ctx.fillText(String(f.defects[i + 4]), x + Math.max(7, 4 * sx), y - 4);
        defects++;
      }
    }
    drawScaleBar(ctx, v.dispW, v.dispH, v.cols, step);
    if (cursor && cursor.rec === r.rec) {
      const x = (cursor.col + 0.5) * sx, y = (cursor.row + 0.5) * sy;
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x - 8, y); ctx.lineTo(x + 8, y); ctx.moveTo(x, y - 8); ctx.lineTo(x, y + 8); ctx.stroke();
    }
    dash.movieFrame = f.frame; dash.atomsDrawn = atoms; dash.defectsDrawn = defects; dash.tracksDrawn = tracks;
    dash.mapsDrawn = 1;
  }
}

function dValue(entry) {
  // D with units: nm²/s when scan_start had frame_interval_s, else nm²/frame with a length pixel size, else px²/frame
  for (const [suffix, units] of [["nm2_per_s", "nm²/s"], ["nm2_per_frame", "nm²/frame"], ["px2_per_frame", "px²/frame"]]) {
    const d = entry[`D_${suffix}`];
    if (d !== undefined && d !== null) return { d, se: entry[`D_stderr_${suffix}`], units };
  }
  return null;
}

function renderTracking(r, f, defectNames) {
  const tr = f.tracking;
  const facts = el("table", {},
    el("tr", {}, el("td", {}, "frame"), el("td", {}, f.frame === null ? "(from snapshot)" : String(f.frame))),
    el("tr", {}, el("td", {}, "latency"), el("td", {}, f.latency_ms === null ? "–" : `${fmt(f.latency_ms)} ms`)),
    el("tr", {}, el("td", {}, "atoms / defects"), el("td", {}, `${f.n_atoms} / ${f.n_defects}`)),
    el("tr", {}, el("td", {}, "novelty"), el("td", {}, f.novelty === null || f.novelty === undefined ? "–"
      : `${fmt(f.novelty)}${f.novel ? " — novel: not vouched for" : ""}`)));
  const parts = [el("h2", {}, "Frame"), facts];
  if (tr) {
    parts.push(el("h2", {}, "Tracks"), el("table", {},
      el("tr", {}, el("td", {}, "tracks (active)"), el("td", {}, `${tr.n_tracks} (${tr.n_active_tracks})`)),
      el("tr", {}, el("td", {}, "mean length"), el("td", {}, `${fmt(tr.mean_track_length)} frames`)),
      el("tr", {}, el("td", {}, "frame interval"), el("td", {}, tr.frame_interval_s ? `${fmt(tr.frame_interval_s)} s` : "not given"))));
    const classes = (tr.diffusion && tr.diffusion.classes) || {};
    const dt = el("table", {}, el("tr", {}, el("th", {}, "class"), el("th", {}, "D"), el("th", {}, "± s.e."), el("th", {}, "steps")));
    for (const [name, entry] of Object.entries(classes)) {
      const d = entry ? dValue(entry) : null;
      dt.append(el("tr", {}, el("td", {}, name), el("td", {}, d ? `${fmt(d.d)} ${d.units}` : "too few steps"),
        el("td", {}, d && d.se !== null && d.se !== undefined ? fmt(d.se) : ""), el("td", {}, entry ? String(entry.n_steps) : "")));
    }
    parts.push(el("h2", {}, "Diffusion"), dt);
    const t = tr.transitions;
    if (t && t.probabilities) {
      const m = el("table", {}, el("tr", {}, el("th", {}, "from \\ to"), ...t.classes.map((c) => el("th", {}, c))));
      t.classes.forEach((c, i) => m.append(el("tr", {}, el("td", {}, c),
        ...t.probabilities[i].map((p) => el("td", {}, p === null ? "–" : fmt(p, 2))))));
      parts.push(el("h2", {}, "Transitions"), m);
    }
  }
  r.info.replaceChildren(...parts);
}

function readoutMovie(v) {
  if (!cursor || !cursor.rec) return;
  const r = v.recs[cursor.rec], f = r && r.latest;
  if (!f || !f.classes) return;
  const step = v.started.pixel_size, { row, col } = cursor;
  const seg = (f.spec.classes && f.spec.classes.labels) || [];
  const rows = [el("tr", {}, el("td", {}, "segmentation"), el("td", {}, seg[f.classes[row * v.cols + col]] || "–"))];
  let best = null;
  const consider = (a, k, kind, names) => {
    for (let i = 0; a && i + k - 1 < a.length; i += k) {
      const d = Math.hypot(a[i] - col, a[i + 1] - row);
      if (!best || d < best.d) best = { d, kind, cls: names[a[i + 2]] || a[i + 2], x: a[i], y: a[i + 1], track: k === 5 ? a[i + 4] : null };
    }
  };
  consider(f.atoms, 3, "atom", classNames(f.spec.atoms, 2));
  consider(f.defects, 5, "defect", classNames(f.spec.defects, 2));
  if (best) rows.push(el("tr", {}, el("td", {}, `nearest ${best.kind}`), el("td", {},
    `${best.cls}${best.track !== null ? ", track " + best.track : ""}, ${fmt(best.d * (step ? step.size : 1))} ${step ? step.units : "px"} away`)));
  const where = step ? ` — x ${fmt(col * step.size)} ${step.units}, y ${fmt(row * step.size)} ${step.units}` : "";
  $("readout").replaceChildren(el("div", {}, `${cursor.rec}: row ${row}, col ${col}${where}`), el("table", {}, ...rows));
}

// ------------------------------------------------------------------ the rest of the page

function renderHead(v) {
  const st = v.started, s = v.summary;
  const calib = st.scan_step ? `scan step ${fmt(st.scan_step.size)} ${st.scan_step.units}`
    : st.pixel_size ? `pixel ${fmt(st.pixel_size.size)} ${st.pixel_size.units}` : "no spatial calibration";
  const axis = st.axis ? `${st.axis.size} channels ${fmt(st.axis.offset)}–${fmt(st.axis.offset + (st.axis.size - 1) * st.axis.scale)} ${st.axis.units}` : "";
  const state = s ? s.state : (v.open === false ? "gone" : "open");
  const progress = v.imaging ? `${v.messages || 0} frame results` : `${v.nRowsFilled} of ${v.rows} rows`;
  const extra = s ? ` · ${s.pixels_recognized}/${s.pixels_expected} px recognized, lost ${s.n_lost || 0}, rejected ${s.rejected.length}, skipped ${(s.skipped || []).length}, ${fmt(s.duration_s)} s`
    : "";
  $("scan-head").replaceChildren(
    el("div", { class: "title" }, `${st.scan_id} `, el("span", { class: `state ${state}` }, state)),
    el("div", { class: "facts" }, [st.modality, `${st.shape[0]} × ${st.shape[1]}`, calib, axis,
      st.components ? `components ${st.components.join(", ")}` : "", st.frame_interval_s ? `frame interval ${fmt(st.frame_interval_s)} s` : "",
      `recognizers ${st.recognizers.join(", ")}`].filter(Boolean).join(" · ")),
    el("div", { class: "facts" }, `${progress}${extra}${v.recovered ? " · completed from a snapshot" : ""}`));
}

let listKey = null, countersKey = null, eventsKey = null;

function renderScanList() {
  const key = JSON.stringify([selected, scansList]);
  if (key === listKey) return;
  listKey = key;
  const ul = $("scans");
  if (!scansList.length) { ul.replaceChildren(el("li", { class: "muted" }, "no scans yet")); return; }
  ul.replaceChildren(...scansList.slice().reverse().map((x) => {
    const pct = x.total ? Math.min(100, 100 * x.done / x.total) : 0;
    const ev = Object.entries(x.events || {}).map(([k, n]) => `${k} ${n}`).join(", ");
    const li = el("li", { class: x.id === selected ? "sel" : "", "data-scan": x.id },
      el("span", { class: "sid" }, x.id), el("span", { class: `state ${x.state}` }, x.state),
      el("div", { class: "muted" }, `${x.modality} · ${x.shape[0]}×${x.shape[1]} · ${x.done}/${x.total ?? "?"} ${x.imaging ? "frames" : "px"}`),
      ev ? el("div", { class: "muted" }, ev) : "",
      el("div", { class: "bar" }, el("div", { style: `width:${pct}%` })));
    li.addEventListener("click", () => select(x.id, true));
    return li;
  }));
}

function renderCounters() {
  const s = lastStatus, t = $("counters");
  const key = s ? JSON.stringify([s.counters, s.open_scans, s.queued_pixels, s.memory_bytes]) : null;
  if (key === countersKey) return;
  countersKey = key;
  if (!s) { t.replaceChildren(); return; }
  const rows = [["open scans", s.open_scans.length], ["queued pixels", s.queued_pixels]];
  if (s.memory_bytes !== undefined) rows.push(["memory", `${fmt(s.memory_bytes / 2 ** 20)} / ${fmt(s.memory_budget_bytes / 2 ** 20)} MiB`]);
  for (const k of Object.keys(s.counters).sort()) rows.push([k, s.counters[k]]);
  t.replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, String(v)))));
}

function renderEvents() {
  const last = eventsShown.length ? eventsShown[eventsShown.length - 1].n : -1;
  if (last === eventsKey) return;
  eventsKey = last;
  const ul = $("events");
  if (!eventsShown.length) { ul.replaceChildren(el("li", { class: "muted" }, "none")); return; }
  ul.replaceChildren(...eventsShown.slice(-60).reverse().map((e) => el("li", { class: e.level },
    `${new Date(e.t * 1000).toLocaleTimeString()} ${e.scan_id || "service"} ${e.code}`,
    e.n_seqs ? ` (${e.n_seqs} seqs)` : (e.seq !== null && e.seq !== undefined ? ` (seq ${e.seq})` : ""), `: ${e.reason}`)));
}

function drawLatency(v) {
  const c = $("latency"), ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const hist = v && v.hist, edges = v && v.edges;
  if (!hist || !edges) return;
  const total = hist.reduce((a, b) => a + b, 0), max = Math.max(1, ...hist);
  const lx = (ms) => 30 + (Math.log10(ms) - Math.log10(edges[0])) / (Math.log10(edges[edges.length - 1]) - Math.log10(edges[0])) * (W - 40);
  ctx.fillStyle = "#5aa9ff";
  for (let i = 0; i < hist.length; i++) {
    if (!hist[i]) continue;
    const x0 = lx(edges[i]), x1 = lx(edges[i + 1]), h = (H - 30) * hist[i] / max;
    ctx.fillRect(x0, H - 18 - h, Math.max(1, x1 - x0 - 1), h);
  }
  ctx.fillStyle = "#8a93a1"; ctx.font = "10px system-ui, sans-serif";
  for (const ms of [0.1, 1, 10, 100, 1000, 10000]) { const x = lx(ms); ctx.fillRect(x, H - 18, 1, 4); ctx.fillText(ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`, x - 10, H - 4); }
  const quant = (q) => { let acc = 0; for (let i = 0; i < hist.length; i++) { acc += hist[i]; if (acc >= q * total) return Math.sqrt(edges[i] * edges[i + 1]); } return null; };
  const s = v.summary;
  const sumText = s && s.latency_ms_p50 !== undefined ? ` · summary p50 ${fmt(s.latency_ms_p50)} ms, p99 ${fmt(s.latency_ms_p99)} ms` : "";
  $("latency-text").textContent = total ? `${total} messages (maps / frame results): p50 ≈ ${fmt(quant(0.5))} ms, p99 ≈ ${fmt(quant(0.99))} ms${sumText}`
    : (sumText ? `joined after the scan${sumText}` : "no latencies yet");
}

function draw() {
  if (!needDraw) return;
  needDraw = false;
  renderScanList();
  renderCounters();
  renderEvents();
  if (!view) return;
  if (view.imaging) { drawMovie(view); readoutMovie(view); } else { drawSpectral(view); readoutSpectral(view); }
  renderHead(view);
  drawLatency(view);
  if (newData) { dash.redraws++; newData = false; }
}

$("follow").addEventListener("change", (ev) => { follow = ev.target.checked; if (follow) history.replaceState(null, "", "#"); needDraw = true; scheduleDraw(); });
window.addEventListener("hashchange", () => { const m = location.hash.match(/scan=([^&]+)/); if (m) select(decodeURIComponent(m[1]), true); });
parseHash();
dash.selected = selected;
connect();
