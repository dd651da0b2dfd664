// The browse page: class names in, per-class thumbnails and the coverage table out.
// Plain JS, no framework and no build step: the service ships this file as it is.
// Every string from the corpus goes in through textContent, never innerHTML: captions are web text.
"use strict";

const KEY_STORE = "react.apiKey";
const PER_CLASS = 60;        // thumbnails drawn per class before "show all"
const PARALLEL = 6;          // image requests in flight (what a browser does per host anyway)
const $ = (id) => document.getElementById(id);

const state = { images: new Map(), blobUrls: [], localIndex: new Map(), run: 0 };

// --- API calls: the key (if any) rides on every request as X-API-Key ------------------------------
function headers(extra) {
  const key = localStorage.getItem(KEY_STORE) || "";
  return Object.assign(key ? { "X-API-Key": key } : {}, extra || {});
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    $("keybox").open = true;
    throw new Error("This service needs an API key: enter it under \u201cAPI key\u201d.");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || `${path}: HTTP ${resp.status}`);
  return { status: resp.status, body };
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

// --- indices ----------------------------------------------------------------------------------------
async function loadIndices() {
  try {
    const { body } = await api("/v1/indices");
    const select = $("index");
    const keep = select.value;
    select.replaceChildren(...body.map((ix) => {
      const opt = document.createElement("option");
      opt.value = ix.name;
      opt.textContent = `${ix.name} (${ix.rows.toLocaleString()} pairs)`;
      return opt;
    }));
    if (body.some((ix) => ix.name === keep)) select.value = keep;
    setStatus(body.length ? "" : "The service holds no index.", body.length ? "" : "error");
  } catch (err) {
    if (/loading/.test(err.message)) { setTimeout(loadIndices, 1000); setStatus("Indices are loading\u2026", "busy"); return; }
    setStatus(err.message, "error");
  }
}

// Whether rows of an index have images on the service's disk (asked once per index).
async function localImages(index) {
  if (!state.localIndex.has(index)) {
    state.localIndex.set(index, api(`/v1/indices/${encodeURIComponent(index)}/images`)
      .then(({ body }) => body.local).catch(() => false));
  }
  return state.localIndex.get(index);
}

// --- thumbnails: fetched with the key (an <img> cannot send headers) and shown as blob URLs ---------
const queue = [];
let active = 0;
function pump() {
  while (active < PARALLEL && queue.length) {
    const job = queue.shift();
    active += 1;
    job().finally(() => { active -= 1; pump(); });
  }
}
function limited(task) {
  return new Promise((resolve, reject) => { queue.push(() => task().then(resolve, reject)); pump(); });
}

function isWeb(url) { return typeof url === "string" && /^https?:\/\//i.test(url); }

function imageSource(index, row, local) {
  const id = `${index}/${row.row}`;
  if (!state.images.has(id)) {
    const remote = isWeb(row.url) ? row.url : null;
    let src;
    if (local && row.row != null) {
      src = limited(async () => {
        const resp = await fetch(`/v1/indices/${encodeURIComponent(index)}/rows/${row.row}/image`, { headers: headers() });
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        const url = URL.createObjectURL(await resp.blob());
        state.blobUrls.push(url);
        return url;
      }).catch(() => remote);  // not on disk after all: the row's web address, if it has one
    } else {
      src = Promise.resolve(remote);
    }
    state.images.set(id, src);
  }
  return state.images.get(id);
}

function loadInto(img, src) {
  return new Promise((resolve) => {
    if (!src) { img.replaceWith(missing()); resolve(); return; }
    img.onload = () => resolve();
    img.onerror = () => { img.replaceWith(missing()); resolve(); };
    img.src = src;
  });
}

function missing() {
  const span = document.createElement("span");
  span.className = "missing";
  span.textContent = "no image";
  return span;
}

// --- rendering --------------------------------------------------------------------------------------
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  return node;
}
const fmt = (v) => (v == null ? "\u2013" : Number(v).toFixed(3));
const anchor = (i) => `class-${i}`;

function card(row, cls, top, index, local, pending) {
  const fig = el("figure", "card");
  const box = el("div", "thumb");
  const img = el("img", "thumb-img");
  img.alt = row.caption || row.key || "";
  img.decoding = "async";
  box.append(img);
  const cap = el("figcaption");
  const text = el("span", "cap", row.caption || "(no caption)");
  text.title = `${row.caption || ""}\nkey: ${row.key}` + (row.duplicates > 1 ? `\n${row.duplicates} near-duplicates collapsed` : "");
  const meta = el("div", "meta");
  const bar = el("span", "bar");
  const fill = el("i");
  fill.style.width = `${Math.max(0, Math.min(1, row.similarity / (top || 1))) * 100}%`;
  bar.append(fill);
  meta.append(el("span", "sim", fmt(row.similarity)), bar);
  cap.append(text, meta);
  const others = (row.classes || []).filter((c) => c !== cls);
  if (others.length) cap.append(el("span", "also", "also: " + others.join(", ")));
  fig.append(box, cap);
  pending.push(imageSource(index, row, local).then((src) => loadInto(img, src)));
  return fig;
}

function renderClasses(rows, report, index, local, run) {
  const names = (report.classes || []).map((c) => c.name);
  const byClass = new Map(names.map((n) => [n, []]));
  for (const row of rows) for (const c of row.classes || []) byClass.get(c)?.push(row);  // rows arrive best first
  const top = rows.reduce((m, r) => Math.max(m, r.similarity), 0);
  const pending = [];
  const sections = (report.classes || []).map((stats, i) => {
    const list = byClass.get(stats.name) || [];
    const sec = el("section", "cls");
    sec.id = anchor(i);
    sec.dataset.class = stats.name;
    const h = el("h3", null, stats.name);
    h.append(el("span", "badge", `${list.length} pair${list.length === 1 ? "" : "s"}`));
    if (stats.coverage != null) h.append(el("span", "badge", `coverage ${fmt(stats.coverage)}`));
    if (stats.low_coverage) h.append(el("span", "badge warn", "low coverage"));
    if (stats.cut) h.append(el("span", "badge", `${stats.cut} cut by the quota`));
    sec.append(h);
    if (!list.length) { sec.append(el("p", "empty", "Nothing retrieved for this class.")); return sec; }
    const grid = el("div", "grid");
    list.slice(0, PER_CLASS).forEach((row) => grid.append(card(row, stats.name, top, index, local, pending)));
    sec.append(grid);
    if (list.length > PER_CLASS) {
      const more = el("button", "link", `show all ${list.length}`);
      more.type = "button";
      more.onclick = () => {
        more.remove();
        list.slice(PER_CLASS).forEach((row) => grid.append(card(row, stats.name, top, index, local, [])));
      };
      sec.append(more);
    }
    return sec;
  });
  $("results").replaceChildren(...sections);
  // data-state=done once every thumbnail has loaded or given up (what a test, or a person, waits for).
  Promise.allSettled(pending).then(() => { if (run === state.run) document.body.dataset.state = "done"; });
}

function reset() {
  state.blobUrls.forEach((u) => URL.revokeObjectURL(u));
  state.blobUrls = [];
  state.images.clear();
  queue.length = 0;
  $("results").replaceChildren();
  $("summary").hidden = true;
}

function parseClasses(text) {
  const seen = new Set();
  return text.split(/[\n,]/).map((s) => s.trim().replace(/\s+/g, " ")).filter((s) => s && !seen.has(s) && seen.add(s));
}

// "class|alias|alias" lines (the classes file's form) -> {class: [alias, ...]}, or an Error naming the line.
// A line's first name must be one of the typed classes: its aliases' pairs are labelled with it.
function parseAliases(text, classes) {
  const out = {};
  const known = new Set(classes);
  text.split("\n").forEach((line, i) => {
    if (!line.trim() || line.trim().startsWith("#")) return;
    const parts = line.split("|").map((p) => p.trim().replace(/\s+/g, " "));
    const where = `Aliases line ${i + 1}`;
    if (parts.some((p) => !p)) {
      throw new Error(`${where}: an empty name in \u201c${line.trim()}\u201d (write class|alias|alias).`);
    }
    if (!known.has(parts[0])) throw new Error(`${where}: \u201c${parts[0]}\u201d is not one of the class names above.`);
    if (parts.length > 1) (out[parts[0]] = out[parts[0]] || []).push(...parts.slice(1));
  });
  return out;
}

// The per-class quota: empty = none, else a whole number >= 1.
function parseQuota(text) {
  if (!text.trim()) return null;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`Per class (quota) must be a whole number of at least 1, got \u201c${text}\u201d.`);
  }
  return n;
}

// --- example images: one file input per class, kept while the class stays in the list ----------------
const exampleInputs = new Map();  // class name -> its <input type=file>
function renderExampleInputs() {
  const rows = parseClasses($("classes").value).map((name) => {
    if (!exampleInputs.has(name)) {
      const input = el("input");
      input.type = "file";
      input.multiple = true;
      input.accept = "image/jpeg,image/png,image/webp";
      input.dataset.class = name;
      input.setAttribute("aria-label", `example images of ${name}`);
      exampleInputs.set(name, input);
    }
    const row = el("label", "example-row");
    row.append(el("span", null, name), exampleInputs.get(name));
    return row;
  });
  $("examples").replaceChildren(...rows);
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);  // data:image/...;base64,... (the service accepts data URLs)
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// {class: [data URL, ...]} for the classes of this task that have example files chosen.
async function readExamples(classes) {
  const out = {};
  for (const name of classes) {
    const files = Array.from(exampleInputs.get(name)?.files || []);
    if (files.length) out[name] = await Promise.all(files.map(dataUrl));
  }
  return out;
}

// A task over the inline limit becomes a job: wait for it and show its coverage (no rows come inline).
async function waitForJob(job, run) {
  for (;;) {
    if (run !== state.run) return null;
    const { body } = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
    if (body.state === "done") return body;
    if (body.state === "failed" || body.state === "cancelled") throw new Error(body.error || `job ${body.state}`);
    setStatus(`Large task: running as job ${body.id} (${Math.round((body.progress || 0) * 100)} %)\u2026`, "busy");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function submit(event) {
  event.preventDefault();
  const classes = parseClasses($("classes").value);
  if (!classes.length) { setStatus("Type at least one class name.", "error"); return; }
  let aliases, perClass;
  try {  // refused here, before anything is sent: the service would answer 409 or 422 anyway
    aliases = parseAliases($("aliases").value, classes);
    $("aliases").removeAttribute("aria-invalid");
    perClass = parseQuota($("per-class").value);
  } catch (err) {
    if (/^Aliases/.test(err.message)) $("aliases").setAttribute("aria-invalid", "true");
    setStatus(err.message, "error");
    return;
  }
  const index = $("index").value || null;
  const run = ++state.run;
  reset();
  document.body.dataset.state = "busy";
  $("go").disabled = true;
  setStatus(`Retrieving ${classes.length} class${classes.length > 1 ? "es" : ""}\u2026`, "busy");
  try {
    const task = { classes, k: Number($("k").value), mode: $("mode").value, templates: $("templates").value,
                   index, inline: true };
    if (Object.keys(aliases).length) task.aliases = aliases;
    if (perClass != null) task.per_class = perClass;
    const examples = await readExamples(classes);
    if (Object.keys(examples).length) Object.assign(task, { examples, example_mode: $("example-mode").value });
    const [{ status, body }, local] = await Promise.all([
      api("/v1/retrieve", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(task) }),
      index ? localImages(index) : Promise.resolve(false)]);
    if (run !== state.run) return;
    if (status === 202) {
      const done = await waitForJob(body, run);
      if (!done) return;
      renderCoverage(done.report || {});
      setStatus(`${done.rows} pairs: too many queries to show thumbnails inline; the subset is job ${done.id} ` +
                `(${done.result_url}). Use fewer classes or templates to browse it.`);
      document.body.dataset.state = "done";
      return;
    }
    renderCoverage(body.report);
    renderClasses(body.rows, body.report, index, local, run);
    setStatus(local ? "" : "This index's images are not on the service's machine: thumbnails come from each row's url.");
  } catch (err) {
    if (run === state.run) { setStatus(err.message, "error"); document.body.dataset.state = "error"; }
  } finally {
    if (run === state.run) $("go").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("apikey");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem(KEY_STORE, key.value.trim()); else localStorage.removeItem(KEY_STORE);
    state.localIndex.clear();
    loadIndices();
  });
  $("keyform").addEventListener("submit", (e) => { e.preventDefault(); key.dispatchEvent(new Event("change")); });
  $("task").addEventListener("submit", submit);
  $("classes").addEventListener("input", renderExampleInputs);
  renderExampleInputs();
  loadIndices();
});
