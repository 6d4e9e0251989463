// saescope feature browser. Every piece of text from the suite is inserted with textContent (never
// innerHTML), so token strings such as "<script>" show as text. Data comes from the local server
// (/api/data?key=...) or, in a static export, from data/<key>.js files that register themselves.
"use strict";

const STATIC = window.SAESCOPE_STATIC === true;
const cache = new Map();

function load(key) {
  if (cache.has(key)) return cache.get(key);
  let promise;
  if (STATIC) {
    promise = new Promise((resolve, reject) => {
      window.SAESCOPE_DATA = window.SAESCOPE_DATA || {};
      const script = document.createElement("script");
      script.src = "data/" + key.replace(/\//g, "_") + ".js";
      script.onload = () => (key in window.SAESCOPE_DATA ? resolve(window.SAESCOPE_DATA[key]) : reject(new Error("missing " + key)));
      script.onerror = () => reject(new Error("cannot load " + key));
      document.head.appendChild(script);
    });
  } else {
    promise = fetch("api/data?key=" + encodeURIComponent(key)).then((r) => {
      if (!r.ok) throw new Error("no data for " + key);
      return r.json();
    });
  }
  cache.set(key, promise);
  return promise;
}

// -- small DOM helpers ------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
const fmt = (v, digits = 3) => (typeof v === "number" ? (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : v.toFixed(digits)) : "–");
const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(v < 0.001 && v > 0 ? 3 : 1) + "%" : "–");
const POST_HEADERS = { "Content-Type": "application/json", "X-Saescope-Token": window.SAESCOPE_TOKEN || "" };
const COLUMN_NOTES = {
  dead: "never fired in the training run's last dead-window tokens (up to 10M): the latents that are really dead",
  unfired: "never fired in the evaluation tokens; a short window also counts rare latents",
};
const visible = (text) => text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
function setPage(crumbs, ...content) {
  const app = document.getElementById("app");
  app.replaceChildren(...content.filter((node) => node !== null && node !== undefined));
  const bar = document.getElementById("crumbs");
  bar.replaceChildren();
  for (const [label, href] of crumbs) bar.append(" › ", href ? el("a", { href, text: label }) : el("span", { text: label }));
}
function fail(error) {
  setPage([], el("p", { class: "error", text: String(error.message || error) }));
}

// -- tokens highlighted by strength ------------------------------------------------------------------
function tokenSpan(text, value, scale, peak) {
  const alpha = scale > 0 ? Math.min(1, Math.max(0, value / scale)) : 0;
  const span = el("span", { class: "tok" + (peak ? " peak" : ""), title: "activation " + fmt(value, 4), "data-act": String(value) });
  span.textContent = visible(text);
  if (alpha > 0) span.style.backgroundColor = "rgba(30, 90, 255, " + (0.12 + 0.78 * alpha).toFixed(3) + ")";
  if (alpha > 0.6) span.style.color = "white";
  return span;
}
function example(record, vocab, scale, hookpoints) {
  const line = el("div", { class: "example" });
  if (hookpoints && record.layer !== undefined) line.append(el("span", { class: "chip layer", title: hookpoints[record.layer], text: "L" + layerNumber(hookpoints, record.layer) }));
  const centre = Math.floor(record.tokens.length / 2);
  record.tokens.forEach((id, i) => {
    if (id < 0) return;
    line.append(tokenSpan(vocab[String(id)] ?? "?", record.acts[i], scale, i === centre));
  });
  return line;
}

// A multi-layer SAE names its layers by hookpoint; show the model's layer number where the name has one.
function layerNumber(hookpoints, index) {
  const match = /(?:^|\.)(\d+)\./.exec(hookpoints[index] || "");
  return match ? match[1] : String(index);
}

// One SVG bar chart for the activation histogram and the layer view: bar heights from ``scale``, a
// hover title per bar, and a label under each end.
function barChart(counts, { cls, height, scale, title, ends }) {
  const width = 420, bar = width / counts.length, top = Math.max(1, ...counts);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + 18);
  counts.forEach((c, i) => {
    const h = c > 0 ? Math.max(1, height * scale(c, top)) : 0;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", i * bar);
    rect.setAttribute("y", height - h);
    rect.setAttribute("width", Math.max(1, bar - 1));
    rect.setAttribute("height", h);
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = title(c, i);
    rect.append(tip);
    svg.append(rect);
  });
  for (const [x, label] of [[0, ends[0]], [width - 8 * ends[1].length, ends[1]]]) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", x);
    t.setAttribute("y", height + 14);
    t.setAttribute("font-size", "10");
    t.textContent = label;
    svg.append(t);
  }
  return svg;
}

function layerBars(fires, hookpoints) {
  return barChart(fires, { cls: "hist layers", height: 90, scale: (c, top) => c / top, title: (c, i) => `${hookpoints[i]}: fires on ${c} tokens`,
    ends: ["L" + layerNumber(hookpoints, 0), "L" + layerNumber(hookpoints, fires.length - 1)] });
}

// A Matryoshka SAE's feature belongs to the smallest nested dictionary (prefix) that holds it.
function prefixLevel(prefixes, feature) {
  const level = prefixes.findIndex((size) => feature < size);
  return level < 0 ? prefixes.length : level + 1;
}

function lineageLinks(title, links, byPath) {
  if (!links || !links.length) return el("div", {}, el("span", { class: "muted", text: title + ": none above the thresholds" }));
  return el("div", { class: "lineage-" + title }, el("span", { class: "muted", text: title + ": " }),
    ...links.map((l) => el("a", { class: "chip", href: `#/sae/${byPath.get(l.sae)}/feature/${l.feature}`,
      title: `${l.sae} #${l.feature}: decoder cosine ${fmt(l.cosine, 3)}` + (l.jaccard === null ? "" : `, co-activation (Jaccard) ${fmt(l.jaccard, 3)}`),
      text: `${l.sae.split("/")[0]} #${l.feature} (cos ${fmt(l.cosine, 2)}${l.jaccard === null ? "" : ", J " + fmt(l.jaccard, 2)})` })));
}

// A transcoder's architecture with its kind ("topk transcoder"); an SAE's architecture alone.
function kindLabel(sae) {
  return sae.kind && sae.kind !== "sae" ? `${sae.architecture} ${sae.kind.replace("_", " ")}` : sae.architecture;
}

// -- pages -------------------------------------------------------------------------------------------
async function overview() {
  const suite = await load("suite");
  const table = el("table", { id: "sae-table" });
  table.append(el("tr", {}, ...["SAE", "arch", "width", "target L0", "L0", "FVU", "ΔLM loss", "loss rec.", "dead", "unfired"].map((h, i) => el("th", { class: i < 2 ? "left" : "", text: h, title: COLUMN_NOTES[h] || "" }))));
  for (const sae of suite.saes) {
    const m = sae.metrics || {};
    const name = sae.interpreted ? el("a", { href: "#/sae/" + sae.n, text: sae.path }) : el("span", { text: sae.path + " (not interpreted)" });
    table.append(el("tr", {}, el("td", { class: "left" }, name), el("td", { class: "left", text: kindLabel(sae) }), el("td", { text: String(sae.width) }),
      el("td", { text: String(sae.target_l0) }), el("td", { text: fmt(m.l0, 1) }), el("td", { text: fmt(m.fvu) }), el("td", { text: fmt(m.delta_lm_loss, 4) }),
      el("td", { text: pct(m.loss_recovered) }), el("td", { text: pct(m.dead_fraction) }), el("td", { text: pct(m.unfired_fraction) })));
  }
  const plots = el("div", { class: "plots" }, ...suite.plots.map((p) => el("img", { src: "plots/" + p, alt: p, title: p })));
  const moe = (suite.expert_profiles || []).length || suite.saes.some((s) => s.experts);
  setPage([[suite.name, null]], el("h1", { text: "Suite " + suite.name }),
    el("p", { class: "muted", text: `${suite.model} on ${suite.dataset}, ${suite.saes.length} SAEs` + (suite.tokens ? `, ${suite.tokens.toLocaleString()} training tokens each` : "") }),
    moe ? el("p", {}, el("a", { id: "experts-link", href: "#/experts", text: "Experts (mixture of experts): profiles and the features that go with each expert" })) : null,
    table, el("h2", { text: "Plots" }), plots);
}

async function saePage(n) {
  const [suite, summary, vocab] = await Promise.all([load("suite"), load(`sae/${n}/summary`), load(`sae/${n}/vocab`)]);
  const sae = suite.saes[n];
  const sortBy = el("select", { id: "sort" }, el("option", { value: "density", text: "sort by density" }), el("option", { value: "max", text: "sort by max activation" }), el("option", { value: "id", text: "sort by id" }));
  const mode = el("select", { id: "search-mode" }, el("option", { value: "id", text: "feature id" }), el("option", { value: "token", text: "token text" }), el("option", { value: "logit", text: "top logit" }));
  const query = el("input", { id: "search", type: "search", placeholder: "search…" });
  const list = el("table", { id: "feature-list" });
  const count = el("span", { class: "muted" });
  const text = (id) => vocab[String(id)] ?? "?";

  function render() {
    const q = query.value.trim().toLowerCase();
    let ids = [...Array(summary.n_features).keys()];
    if (q) {
      if (mode.value === "id") ids = ids.filter((i) => String(i) === q || String(i).startsWith(q));
      else if (mode.value === "token") ids = ids.filter((i) => summary.peak_tokens[i].some((t) => text(t).toLowerCase().includes(q)));
      else ids = ids.filter((i) => text(summary.top_logit[i]).toLowerCase().includes(q));
    }
    const key = sortBy.value;
    if (key !== "id") ids.sort((a, b) => summary[key][b] - summary[key][a]);
    count.textContent = `${ids.length} of ${summary.n_features} features`;
    const multi = Array.isArray(summary.mean_layer);
    const nested = Array.isArray(summary.prefixes);
    const headers = ["feature", "density", "max act.", "peaks on", "top logit"].concat(multi ? ["mean layer"] : [], nested ? ["prefix level"] : []);
    list.replaceChildren(el("tr", {}, ...headers.map((h) => el("th", { class: "left", text: h }))));
    for (const i of ids.slice(0, 300)) {
      const peaks = el("td", { class: "left" }, ...summary.peak_tokens[i].slice(0, 5).map((t) => el("span", { class: "chip", text: visible(text(t)) })));
      list.append(el("tr", {}, el("td", { class: "left" }, el("a", { href: `#/sae/${n}/feature/${i}`, text: "#" + i })), el("td", { text: pct(summary.density[i]) }),
        el("td", { text: fmt(summary.max[i]) }), peaks, el("td", { class: "left", text: visible(text(summary.top_logit[i])) }),
        multi ? el("td", { text: summary.mean_layer[i] === null ? "–" : "L" + fmt(summary.mean_layer[i], 1) }) : null,
        nested ? el("td", { class: "prefix-level", text: `${prefixLevel(summary.prefixes, i)} of ${summary.prefixes.length}` }) : null));
    }
  }
  for (const control of [sortBy, mode]) control.addEventListener("change", render);
  query.addEventListener("input", render);
  render();
  const alive = summary.density.filter((d) => d > 0).length;
  setPage([[suite.name, "#/"], [sae.path, null]], el("h1", { text: sae.path }),
    el("p", { class: "muted", text: `${summary.n_features} features (${alive} fired), measured on ${summary.n_tokens.toLocaleString()} tokens` }),
    promptPanel(n), el("h2", { text: "Features" }), el("div", { class: "controls" }, sortBy, mode, query, count), list);
}

function promptPanel(n) {
  const panel = el("div", { id: "prompt-panel" }, el("h2", { text: "Try a prompt" }));
  if (STATIC) {
    panel.append(el("p", { class: "muted", text: "Prompt inspection needs the model: run `saescope view SUITE` instead of the static export." }));
    return panel;
  }
  const box = el("textarea", { id: "prompt-text", rows: "3", cols: "80", placeholder: "Type text and press Run" });
  const result = el("div", { id: "prompt-result" });
  const run = el("button", { id: "prompt-run", text: "Run" });
  run.addEventListener("click", async () => {
    result.replaceChildren(el("p", { class: "muted", text: "Running the model…" }));
    try {
      const response = await fetch("api/prompt", { method: "POST", headers: POST_HEADERS, body: JSON.stringify({ sae: n, text: box.value }) });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || "request failed");
      result.replaceChildren(...body.tokens.map((token) => el("div", { class: "prompt-token" }, el("div", { class: "text", text: visible(token.text) }),
        ...token.features.map(([f, v, layer]) => el("div", {}, el("a", { class: "chip feature-link", href: `#/sae/${n}/feature/${f}`,
          text: `#${f} ${fmt(v, 2)}` + (layer === undefined ? "" : ` @L${layerNumber(body.hookpoints, layer)}`) }))))));
    } catch (error) {
      result.replaceChildren(el("p", { class: "error", text: String(error.message || error) }));
    }
  });
  panel.append(box, el("div", {}, run), result);
  return panel;
}

function steerPanel(n, f) {
  const panel = el("div", { id: "steer-panel" }, el("h2", { text: "Steer with this feature" }));
  if (STATIC) {
    panel.append(el("p", { class: "muted", text: "Steering needs the model: run `saescope view SUITE` instead of the static export." }));
    return panel;
  }
  const box = el("textarea", { id: "steer-text", rows: "2", cols: "80", placeholder: "Prompt to continue" });
  const strength = el("input", { id: "steer-strength", type: "range", min: "-10", max: "10", step: "0.5", value: "4" });
  const shown = el("span", { id: "steer-strength-value", text: "4× max" });
  strength.addEventListener("input", () => (shown.textContent = strength.value + "× max"));
  const kind = el("select", { id: "steer-kind" }, el("option", { value: "add", text: "add" }), el("option", { value: "clamp", text: "clamp" }),
    el("option", { value: "ablate", text: "ablate" }));
  const run = el("button", { id: "steer-run", text: "Generate" });
  const result = el("div", { id: "steer-result", class: "columns" });
  run.addEventListener("click", async () => {
    result.replaceChildren(el("p", { class: "muted", text: "Generating twice with the same seed…" }));
    try {
      const response = await fetch("api/steer", { method: "POST", headers: POST_HEADERS,
        body: JSON.stringify({ sae: n, feature: f, strength: Number(strength.value), kind: kind.value, text: box.value }) });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || "request failed");
      const column = (title, g, id) => el("div", { id, class: "steer-output" }, el("h3", { text: title }), el("div", { class: "example", text: g.text }),
        el("p", { class: "muted", text: `feature fires on ${g.feature_rate === null ? "–" : pct(g.feature_rate)} of tokens; perplexity ${fmt(g.perplexity, 1)}` }));
      result.replaceChildren(column("unsteered", body.unsteered, "steer-plain"), column("steered", body.steered, "steer-steered"),
        el("p", { class: "muted", text: "steered at " + (body.hookpoint || "the SAE's hookpoint") }));
    } catch (error) {
      result.replaceChildren(el("p", { class: "error", text: String(error.message || error) }));
    }
  });
  panel.append(box, el("div", { class: "controls" }, kind, strength, shown, run), result);
  return panel;
}

function histogram(counts, edges) {
  return barChart(counts, { cls: "hist", height: 110, scale: (c, top) => Math.log1p(c) / Math.log1p(top),
    title: (c, i) => `${c} tokens with activation 10^${edges[i].toFixed(2)}–10^${edges[i + 1].toFixed(2)}`,
    ends: ["10^" + edges[0], "10^" + edges[edges.length - 1]] });
}

async function featurePage(n, f) {
  const [suite, summary, vocab, lineage] = await Promise.all([load("suite"), load(`sae/${n}/summary`), load(`sae/${n}/vocab`),
    load(`sae/${n}/lineage`).catch(() => null)]);
  if (!(f >= 0 && f < summary.n_features)) throw new Error(`feature ${f} does not exist (0–${summary.n_features - 1})`);
  const start = Math.floor(f / summary.shard_size) * summary.shard_size;
  const shard = await load(`sae/${n}/features/${start}`);
  const record = shard[f - start];
  const sae = suite.saes[n];
  const text = (id) => vocab[String(id)] ?? "?";
  const scale = record.max || 1;
  const logitTable = (rows, title) => el("table", { class: "logits" }, el("tr", {}, el("th", { class: "left", text: title }), el("th", { text: "effect" })),
    ...rows.map(([id, v]) => el("tr", {}, el("td", { class: "left", text: visible(text(id)) }), el("td", { text: fmt(v) }))));
  const byPath = new Map(suite.saes.map((s) => [s.path, s.n]));
  const similar = el("div", {}, ...record.similar.map(([id, c]) => el("a", { class: "chip", href: `#/sae/${n}/feature/${id}`, text: `#${id} (${fmt(c, 2)})` })));
  const adjacent = el("div", {}, ...record.adjacent.map((a) => el("div", {}, el("span", { class: "muted", text: a.sae + ": " }),
    ...a.features.map(([id, c]) => el("a", { class: "chip", href: `#/sae/${byPath.get(a.sae)}/feature/${id}`, text: `#${id} (${fmt(c, 2)})` })))));
  const samples = el("div", {});
  let band = -1;
  for (const s of record.samples) {
    if (s.quantile !== band) {
      band = s.quantile;
      samples.append(el("div", { class: "muted", text: `activation quantile ${Math.round(100 * band)}–${Math.round(100 * (band + 0.2))}%` }));
    }
    samples.append(example(s, vocab, scale, summary.hookpoints));
  }
  const layers = record.layer_fires && summary.hookpoints
    ? el("div", { id: "layer-view" }, el("h2", { text: "Layers (multi-layer SAE): where this feature fires" }), layerBars(record.layer_fires, summary.hookpoints),
      el("p", { class: "muted", text: `mean layer ${summary.mean_layer && summary.mean_layer[f] !== null ? "L" + fmt(summary.mean_layer[f], 1) : "–"}; each example below is labelled with the layer it fired at` }))
    : null;
  const level = Array.isArray(summary.prefixes)
    ? el("p", { id: "prefix-level", class: "muted", text: `Matryoshka level ${prefixLevel(summary.prefixes, f)} of ${summary.prefixes.length}: ` +
      `in the nested dictionary of the first ${summary.prefixes[prefixLevel(summary.prefixes, f) - 1]} latents ` +
      `(prefixes ${summary.prefixes.join(" ⊂ ")}); level-1 features must reconstruct on their own, so they tend to be the broadest` })
    : null;
  const family = lineage
    ? el("div", { id: "lineage" }, el("h2", { text: "Lineage (adjacent layers)" }),
      lineageLinks("parents", lineage.parents[String(f)], byPath), lineageLinks("children", lineage.children[String(f)], byPath))
    : null;
  const transcoder = sae.kind && sae.kind !== "sae"
    ? el("p", { id: "transcoder-note", class: "muted", text: `A ${kindLabel(sae)} feature: it fires on what the MLP reads (${sae.reads}) and writes ` +
      `${sae.hookpoint} in the MLP's place. Top activations are its input side; logit effects are its output side (its decoder row ` +
      "through the rest of the model's unembedding)." })
    : null;
  setPage([[suite.name, "#/"], [sae.path, `#/sae/${n}`], ["#" + f, null]],
    el("h1", { text: `Feature #${f}` }),
    el("p", { class: "stats" }, el("span", { text: "density " + pct(record.density) }), el("span", { text: "max activation " + fmt(record.max) }),
      el("span", { text: "mean when active " + fmt(record.mean) }), el("span", { class: "muted", text: sae.path })),
    transcoder, level, layers,
    el("h2", { text: "Top activations" }),
    el("div", { id: "top-examples" }, ...(record.top.length ? record.top.map((e) => example(e, vocab, scale, summary.hookpoints)) : [el("p", { class: "muted", text: "This feature never fired on the interpreted tokens." })])),
    el("div", { class: "columns" },
      el("div", {}, el("h2", { text: "Activation histogram (log10)" }), histogram(record.histogram, summary.log10_bin_edges)),
      el("div", {}, el("h2", { text: "Logit effects" }), el("div", { class: "columns" }, logitTable(record.logits.top, "promoted"), logitTable(record.logits.bottom, "suppressed")))),
    family, featureExperts(record),
    el("h2", { text: "Similar features (decoder cosine)" }), similar, adjacent,
    el("h2", { text: "Examples across activation quantiles" }), samples, steerPanel(n, f));
}

// -- SAEs on vectors (cells, images, embeddings): no tokens, no model --------------------------------
// Images arrive as PNG data URLs inside the JSON; anything else in an image field is ignored.
function picture(url, cls, title) {
  const img = el("img", { class: cls, alt: title || "", title: title || "" });
  if (typeof url === "string" && url.startsWith("data:image/png;base64,")) img.src = url;
  return img;
}
function bestCategory(record) {
  let best = null;
  for (const [column, entries] of Object.entries(record.enrichment || {})) {
    if (entries.length && (best === null || entries[0].auroc > best.auroc)) best = { column, ...entries[0] };
  }
  return best;
}

async function vectorOverview(suite) {
  const picked = new Set(suite.selection ? suite.selection.paths : []);
  const table = el("table", { id: "sae-table" });
  table.append(el("tr", {}, ...["SAE", "arch", "width", "target L0", "L0", "FVU", "DL bits", "unfired", "rows", "features fired"].map((h, i) => el("th", { class: i < 2 ? "left" : "", text: h }))));
  for (const sae of suite.saes) {
    const m = sae.metrics || {};
    const name = sae.interpreted ? el("a", { href: "#/sae/" + sae.n, text: sae.path }) : el("span", { text: sae.path + " (not interpreted)" });
    const mark = picked.has(sae.path) ? el("span", { class: "chip mdl-choice", title: `chosen by ${suite.selection.by} among SAEs with FVU ≤ ${suite.selection.max_fvu}`, text: "★ " + suite.selection.by + " choice" }) : null;
    table.append(el("tr", {}, el("td", { class: "left" }, name, mark), el("td", { class: "left", text: sae.architecture || "–" }), el("td", { text: String(sae.width) }),
      el("td", { text: sae.target_l0 === null || sae.target_l0 === undefined ? "–" : String(sae.target_l0) }), el("td", { text: fmt(m.l0, 1) }), el("td", { text: fmt(m.fvu) }),
      el("td", { text: fmt(m.description_length, 1) }), el("td", { text: pct(m.unfired_fraction) }), el("td", { text: sae.n_rows ? String(sae.n_rows) : "–" }),
      el("td", { text: sae.alive === undefined || sae.alive === null ? "–" : String(sae.alive) })));
  }
  const plots = el("div", { class: "plots" }, ...suite.plots.map((p) => el("img", { src: "plots/" + p, alt: p, title: p })));
  const what = suite.saes.find((s) => s.what) || {};
  setPage([[suite.name, null]], el("h1", { text: "SAEs on vectors: " + suite.name }),
    el("p", { class: "muted", text: `${suite.saes.length} SAE(s)` + (what.what ? ` on ${what.what}` : "") + "; no tokens: features are read from the rows, their metadata and the input dimensions" }),
    table, suite.plots.length ? el("h2", { text: "Plots" }) : null, plots);
}

async function vectorSaePage(suite, n) {
  const data = await load(`sae/${n}/vectors`);
  const sae = suite.saes[n];
  const images = Array.isArray(data.image_shape);
  const sortBy = el("select", { id: "sort" }, el("option", { value: "density", text: "sort by density" }), el("option", { value: "max", text: "sort by max activation" }),
    el("option", { value: "auroc", text: "sort by best AUROC" }), el("option", { value: "id", text: "sort by id" }));
  const query = el("input", { id: "search", type: "search", placeholder: "feature id, category or input dimension…" });
  const list = el("table", { id: "feature-list" });
  const count = el("span", { class: "muted" });
  const best = data.features.map(bestCategory);
  function render() {
    const q = query.value.trim().toLowerCase();
    let ids = data.features.map((r) => r.id);
    if (q) ids = ids.filter((i) => String(i) === q || (best[i] && best[i].category.toLowerCase().includes(q)) ||
      data.features[i].loadings.some(([name]) => String(name).toLowerCase() === q));
    const key = sortBy.value;
    if (key === "auroc") ids.sort((a, b) => (best[b] ? best[b].auroc : 0) - (best[a] ? best[a].auroc : 0));
    else if (key !== "id") ids.sort((a, b) => data.features[b][key] - data.features[a][key]);
    count.textContent = `${ids.length} of ${data.n_features} features`;
    const headers = ["feature"].concat(images ? ["decoder row"] : [], ["density", "max act.", "best category (AUROC)"], images ? [] : ["top input dimensions"]);
    list.replaceChildren(el("tr", {}, ...headers.map((h) => el("th", { class: "left", text: h }))));
    for (const i of ids.slice(0, 300)) {
      const r = data.features[i];
      const b = best[i];
      list.append(el("tr", {}, el("td", { class: "left" }, el("a", { href: `#/sae/${n}/feature/${i}`, text: "#" + i })),
        images ? el("td", {}, picture(r.decoder_image, "pixels thumb", "decoder row of #" + i)) : null,
        el("td", { text: pct(r.density) }), el("td", { text: fmt(r.max) }),
        el("td", { class: "left", text: b ? `${b.column}: ${b.category} (${fmt(b.auroc, 2)})` : "–" }),
        images ? null : el("td", { class: "left" }, ...r.loadings.slice(0, 5).map(([name, w]) => el("span", { class: "chip", title: "weight " + fmt(w), text: String(name) })))));
    }
  }
  sortBy.addEventListener("change", render);
  query.addEventListener("input", render);
  render();
  setPage([[suite.name, "#/"], [sae.path, null]], el("h1", { text: sae.path }),
    el("p", { class: "muted", text: `${data.n_features} features (${data.alive} fire) on ${data.n_rows.toLocaleString()} rows` + (data.what ? ` of ${data.what}` : "") }),
    el("div", { class: "controls" }, sortBy, query, count), list);
}

// The rows in 2-D (the file's UMAP, t-SNE or PCA, else the inputs' PCA): grey where the feature is
// silent, coloured from light to dark blue by its activation where it fires (strongest drawn last).
function scatterPlot(scatter, active, peak) {
  const svgNS = "http://www.w3.org/2000/svg";
  const width = 380, height = 300, pad = 8;
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "scatter");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const xs = scatter.points.map((p) => p[0]), ys = scatter.points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / (y1 - y0 || 1)) * (height - 2 * pad);
  const dot = (i, colour, r, tip) => {
    const c = document.createElementNS(svgNS, "circle");
    c.setAttribute("cx", sx(scatter.points[i][0]).toFixed(1));
    c.setAttribute("cy", sy(scatter.points[i][1]).toFixed(1));
    c.setAttribute("r", r);
    c.setAttribute("fill", colour);
    if (tip) {
      const t = document.createElementNS(svgNS, "title");
      t.textContent = tip;
      c.append(t);
    }
    svg.append(c);
    return c;
  };
  const firing = new Set(active.map(([i]) => i));
  scatter.points.forEach((_, i) => { if (!firing.has(i)) dot(i, "#d0d5dd", 1.6, null); });
  for (const [i, v] of [...active].sort((a, b) => a[1] - b[1])) {
    const t = Math.max(0, Math.min(1, v / (peak || 1)));
    dot(i, `rgb(${Math.round(190 - 180 * t)}, ${Math.round(210 - 150 * t)}, 255)`, 2.4, `row ${scatter.rows[i]}: ${fmt(v, 3)}`).setAttribute("class", "active");
  }
  return svg;
}

function aurocBars(column, entries) {
  const rows = entries.slice(0, 12).map((e) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = (100 * Math.max(0, Math.min(1, e.auroc))).toFixed(1) + "%";
    if (e.auroc >= 0.8) bar.classList.add("strong");
    return el("tr", {}, el("td", { class: "left", text: e.category }), el("td", { class: "bar-cell" }, bar),
      el("td", { text: fmt(e.auroc, 3) }), el("td", { text: fmt(e.mean_in) }), el("td", { text: fmt(e.mean_out) }));
  });
  return el("div", { class: "enrichment", "data-column": column }, el("h3", { text: column }),
    el("table", {}, el("tr", {}, ...["category", "AUROC (0.5 = chance)", "", "mean in", "mean out"].map((h) => el("th", { class: "left", text: h }))), ...rows));
}

async function vectorFeaturePage(suite, n, f) {
  const data = await load(`sae/${n}/vectors`);
  if (!(f >= 0 && f < data.n_features)) throw new Error(`feature ${f} does not exist (0–${data.n_features - 1})`);
  const record = data.features[f];
  const sae = suite.saes[n];
  const images = Array.isArray(data.image_shape);
  const top = record.top || [];
  let examples;
  if (!top.length) examples = el("p", { class: "muted", text: "This feature never fired on the interpreted rows." });
  else if (images) {
    examples = el("div", { id: "top-examples", class: "image-row" }, ...top.map((t) => el("figure", {}, picture(t.image, "pixels example-image", "row " + t.row),
      el("figcaption", { text: `row ${t.row}: ${fmt(t.act, 2)}` + (t.metadata ? " " + Object.values(t.metadata).slice(0, 1).join("") : "") }))));
  } else {
    const columns = [...new Set(top.flatMap((t) => Object.keys(t.metadata || {})))].slice(0, 8);
    examples = el("table", { id: "top-examples" }, el("tr", {}, ...["row", "activation", ...columns].map((h) => el("th", { class: "left", text: h }))),
      ...top.map((t) => el("tr", {}, el("td", { class: "left", text: String(t.row) }), el("td", { text: fmt(t.act) }),
        ...columns.map((c) => el("td", { class: "left", text: t.metadata && t.metadata[c] !== undefined && t.metadata[c] !== null ? String(t.metadata[c]) : "–" })))));
  }
  const hist = record.histogram
    ? barChart(record.histogram.counts, { cls: "hist", height: 110, scale: (c, topCount) => c / topCount,
      title: (c, i) => `${c} rows with activation ${fmt(record.histogram.edges[i])}–${fmt(record.histogram.edges[i + 1])}`,
      ends: [fmt(record.histogram.edges[0], 2), fmt(record.histogram.edges[record.histogram.edges.length - 1], 2)] })
    : el("p", { class: "muted", text: "no activations" });
  const enrichment = Object.entries(record.enrichment || {}).map(([column, entries]) => aurocBars(column, entries));
  const correlations = Object.entries(record.correlation || {});
  const loadings = el("table", { id: "loadings" }, el("tr", {}, el("th", { class: "left", text: "input dimension" }), el("th", { text: "decoder weight" })),
    ...record.loadings.map(([name, w]) => el("tr", {}, el("td", { class: "left", text: String(name) }), el("td", { text: fmt(w) }))));
  const transcoder = sae.kind && sae.kind !== "sae"
    ? el("p", { id: "transcoder-note", class: "muted", text: `A ${kindLabel(sae)} feature: it fires on what the MLP reads (${sae.reads}) and writes ` +
      `${sae.hookpoint} in the MLP's place. Top activations are its input side; logit effects are its output side (its decoder row ` +
      "through the rest of the model's unembedding)." })
    : null;
  setPage([[suite.name, "#/"], [sae.path, `#/sae/${n}`], ["#" + f, null]],
    el("h1", { text: `Feature #${f}` }),
    el("p", { class: "stats" }, el("span", { text: "density " + pct(record.density) }), el("span", { text: "max activation " + fmt(record.max) }),
      el("span", { text: "mean when active " + fmt(record.mean_active) }), el("span", { class: "muted", text: sae.path })),
    el("div", { class: "columns" },
      images ? el("div", { id: "decoder-view" }, el("h2", { text: "Decoder row" }), picture(record.decoder_image, "pixels decoder-image", "decoder row of #" + f),
        el("p", { class: "muted", text: "what the feature adds to the input: red where it adds, blue where it removes" })) : null,
      el("div", {}, el("h2", { text: "Activation histogram (active rows)" }), hist),
      data.scatter ? el("div", { id: "scatter-view" }, el("h2", { text: "Where it fires: " + data.scatter.name }), scatterPlot(data.scatter, record.scatter || [], record.max),
        el("p", { class: "muted", text: `${(record.scatter || []).length} of ${data.scatter.points.length} rows shown fire` })) : null),
    el("h2", { text: images ? "Top activating images" : "Top activating rows" }), examples,
    enrichment.length ? el("h2", { text: "Enrichment by category" }) : null, ...enrichment,
    correlations.length ? el("h2", { text: "Correlation with numeric columns" }) : null,
    correlations.length ? el("table", { id: "correlations" }, ...correlations.map(([c, r]) => el("tr", {}, el("td", { class: "left", text: c }), el("td", { text: fmt(r) })))) : null,
    images ? null : el("h2", { text: "Input dimensions it writes to" }), images ? null : loadings);
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const page = load("suite").then((suite) => {
    const vectors = suite.kind === "vectors";
    if (parts.length === 0) return vectors ? vectorOverview(suite) : overview();
    if (parts[0] === "sae" && parts.length === 2) return vectors ? vectorSaePage(suite, Number(parts[1])) : saePage(Number(parts[1]));
    if (parts[0] === "experts" && parts.length <= 2) return parts.length === 1 ? expertsOverview(suite) : profilePage(suite, parts[1]);
    if (parts[0] === "expert" && parts.length === 3) return expertPage(suite, Number(parts[1]), Number(parts[2]));
    if (parts[0] === "sae" && parts[2] === "feature" && parts.length === 4) {
      return vectors ? vectorFeaturePage(suite, Number(parts[1]), Number(parts[3])) : featurePage(Number(parts[1]), Number(parts[3]));
    }
    throw new Error("no such page: " + location.hash);
  });
  page.then(() => window.scrollTo(0, 0)).catch(fail);
}
window.addEventListener("hashchange", route);
route();
