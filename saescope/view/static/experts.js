// Mixture-of-experts pages of the feature browser: expert profiles (saescope experts profile) as a
// layer × expert heat map and a ranked table, one page per expert with the features that go with it,
// and the experts section of a feature page. Uses the helpers of app.js (el, fmt, pct, load, setPage);
// all text is inserted as text.
"use strict";

const EXPERT_STATS = { diff: "rate difference", risk_ratio: "risk ratio", npmi: "NPMI" };

function heatColour(value, limit) {
  const t = Math.max(-1, Math.min(1, limit > 0 ? value / limit : 0));
  const fade = (x) => Math.round(255 * (1 - 0.85 * Math.abs(x)));
  return t >= 0 ? `rgb(255,${fade(t)},${fade(t)})` : `rgb(${fade(t)},${fade(t)},255)`;
}

function svgNode(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

// Cells coloured by the statistic (red: more on the behaviour set), each a link to the expert's page.
function expertHeatmap(profile, by) {
  const raw = profile.statistics[by];
  const values = raw.map((row) => row.map((v) => (by === "risk_ratio" ? Math.log2(v) : v)));
  const nLayers = profile.layers.length, nExperts = Math.max(...profile.n_experts);
  const cell = Math.max(3, Math.min(44, Math.floor(900 / nExperts))), rowHeight = Math.max(6, Math.min(32, Math.floor(520 / nLayers)));
  const left = 34, top = 6;
  const limit = Math.max(1e-9, ...values.flatMap((row, i) => row.slice(0, profile.n_experts[i]).map(Math.abs)));
  const svg = svgNode("svg", { class: "expert-heatmap", width: left + nExperts * cell + 8, height: top + nLayers * rowHeight + 28 });
  profile.layers.forEach((layer, i) => {
    if (nLayers <= 32 || i % 4 === 0) {
      const label = svgNode("text", { x: 0, y: top + i * rowHeight + rowHeight * 0.75, "font-size": "10" });
      label.textContent = "L" + layer;
      svg.append(label);
    }
    for (let e = 0; e < profile.n_experts[i]; e++) {
      const rect = svgNode("rect", { x: left + e * cell, y: top + i * rowHeight, width: cell - (cell > 5 ? 1 : 0), height: rowHeight - 1,
        fill: heatColour(values[i][e], limit), class: "expert-cell", "data-layer": layer, "data-expert": e });
      const tip = svgNode("title", {});
      tip.textContent = `layer ${layer} expert ${e}: ${EXPERT_STATS[by]} ${fmt(raw[i][e], 3)} (behaviour ${pct(profile.statistics.rate_behaviour[i][e])}, control ${pct(profile.statistics.rate_control[i][e])})`;
      rect.append(tip);
      rect.addEventListener("click", () => (location.hash = `#/expert/${layer}/${e}`));
      svg.append(rect);
    }
  });
  const axis = svgNode("text", { x: left, y: top + nLayers * rowHeight + 18, "font-size": "10" });
  axis.textContent = `expert 0 … ${nExperts - 1}`;
  svg.append(axis);
  return el("div", {}, svg, el("p", { class: "muted", text: `Red: selected more often on the behaviour set; blue: on the control set ` +
    `(${by === "risk_ratio" ? "log2 " : ""}${EXPERT_STATS[by]}, colour scale ±${fmt(limit, 2)}). Hover a cell for its figures; click it for the expert.` }));
}

function expertLink(layer, expert) {
  return el("a", { class: "chip expert-link", href: `#/expert/${layer}/${expert}`, text: `L${layer} E${expert}` });
}

async function expertsOverview(suite) {
  const profiles = await Promise.all(suite.expert_profiles.map((name) => load(`experts/${name}`)));
  const list = el("table", { id: "profile-list" }, el("tr", {}, ...["profile", "model", "behaviour", "control", "tokens", "most distinctive"].map((h) => el("th", { class: "left", text: h }))));
  profiles.forEach((p, i) => {
    const name = suite.expert_profiles[i];
    list.append(el("tr", {}, el("td", { class: "left" }, el("a", { href: `#/experts/${name}`, text: name })), el("td", { class: "left", text: p.model }),
      el("td", { class: "left", text: `${p.behaviour.prompts} prompts (${p.behaviour.source})` }), el("td", { class: "left", text: `${p.control.prompts} prompts (${p.control.source})` }),
      el("td", { class: "left", text: p.tokens }), el("td", { class: "left" }, ...p.experts.slice(0, 5).map((r) => expertLink(r.layer, r.expert)))));
  });
  const withFeatures = suite.saes.filter((s) => s.experts);
  setPage([[suite.name, "#/"], ["experts", null]], el("h1", { text: "Experts" }),
    profiles.length ? list : el("p", { class: "muted", text: "No expert profile in this suite: run `saescope experts profile --model M --behaviour A.txt --control B.txt --out SUITE/experts/NAME`." }),
    el("p", { class: "muted", text: withFeatures.length ? `${withFeatures.length} interpreted SAEs record which experts their features go with: open an expert from a heat map or a feature page.`
      : "No SAE of this suite records experts (interpret a suite of an MoE model to get them)." }));
}

async function profilePage(suite, name) {
  const profile = await load(`experts/${name}`);
  const by = el("select", { id: "profile-by" }, ...Object.entries(EXPERT_STATS).map(([value, text]) => el("option", { value, text: "colour and rank by " + text })));
  by.value = profile.rank_by || "diff";
  const map = el("div", { id: "profile-heatmap" });
  const table = el("table", { id: "profile-table" });
  function render() {
    map.replaceChildren(expertHeatmap(profile, by.value));
    const rows = [...profile.experts].sort((a, b) => b[by.value] - a[by.value]).slice(0, 30);
    table.replaceChildren(el("tr", {}, ...["rank", "expert", "rate B", "rate C", "difference [95% CI]", "risk ratio [95% CI]", "NPMI"].map((h) => el("th", { text: h }))),
      ...rows.map((r, i) => el("tr", {}, el("td", { text: String(i + 1) }), el("td", { class: "left" }, expertLink(r.layer, r.expert)),
        el("td", { text: pct(r.rate_behaviour) }), el("td", { text: pct(r.rate_control) }),
        el("td", { text: `${fmt(r.diff, 3)} [${fmt(r.diff_low, 3)}, ${fmt(r.diff_high, 3)}]` }),
        el("td", { text: `${fmt(r.risk_ratio, 2)} [${fmt(r.risk_ratio_low, 2)}, ${fmt(r.risk_ratio_high, 2)}]` }), el("td", { text: fmt(r.npmi, 2) }))));
  }
  by.addEventListener("change", render);
  render();
  setPage([[suite.name, "#/"], ["experts", "#/experts"], [name, null]], el("h1", { text: `Expert profile ${name}` }),
    el("p", { class: "muted", text: `${profile.model}: ${profile.behaviour.prompts} behaviour prompts (${profile.behaviour.tokens} tokens) against ${profile.control.prompts} control prompts ` +
      `(${profile.control.tokens} tokens), ${profile.tokens} tokens counted; intervals from ${profile.bootstrap.draws} resamples of prompts. Click a cell for the expert.` }),
    el("div", { class: "controls" }, by), map, el("h2", { text: "Most distinctive experts" }), table);
}

async function expertPage(suite, layer, expert) {
  const profiles = await Promise.all(suite.expert_profiles.map((name) => load(`experts/${name}`)));
  const rates = el("table", { id: "expert-rates" }, el("tr", {}, ...["profile", "rank", "rate B", "rate C", "difference [95% CI]", "risk ratio", "NPMI"].map((h) => el("th", { text: h }))));
  profiles.forEach((p, i) => {
    const r = p.experts.find((row) => row.layer === layer && row.expert === expert);
    if (!r) return;
    rates.append(el("tr", {}, el("td", { class: "left" }, el("a", { href: `#/experts/${suite.expert_profiles[i]}`, text: suite.expert_profiles[i] })),
      el("td", { text: `${r.rank} of ${p.experts.length}` }), el("td", { text: pct(r.rate_behaviour) }), el("td", { text: pct(r.rate_control) }),
      el("td", { text: `${fmt(r.diff, 3)} [${fmt(r.diff_low, 3)}, ${fmt(r.diff_high, 3)}]` }), el("td", { text: fmt(r.risk_ratio, 2) }), el("td", { text: fmt(r.npmi, 2) })));
  });
  const sections = [];
  for (const sae of suite.saes.filter((s) => s.experts)) {
    const table = await load(`sae/${sae.n}/experts`);
    const entry = table.per_expert[`${layer}:${expert}`];
    if (!entry) continue;
    sections.push(el("div", { class: "expert-features" }, el("h3", { text: sae.path }),
      el("p", { class: "muted", text: `selected on ${pct(entry.base)} of tokens overall` }),
      entry.features.length ? el("table", {}, el("tr", {}, ...["feature", "P(expert | feature)", "lift"].map((h) => el("th", { text: h }))),
        ...entry.features.map(([f, rate, lift]) => el("tr", {}, el("td", { class: "left" }, el("a", { class: "feature-link", href: `#/sae/${sae.n}/feature/${f}`, text: "#" + f })),
          el("td", { text: pct(rate) }), el("td", { text: fmt(lift, 2) + "×" }))))
        : el("p", { class: "muted", text: "no feature raises this expert's selection above its base rate" })));
  }
  setPage([[suite.name, "#/"], ["experts", "#/experts"], [`layer ${layer} expert ${expert}`, null]], el("h1", { text: `Layer ${layer}, expert ${expert}` }),
    el("h2", { text: "In the profiles" }), rates.children.length > 1 ? rates : el("p", { class: "muted", text: "no profile covers this expert" }),
    el("h2", { text: "Features that go with it (lift = P(expert | feature) / P(expert))" }),
    ...(sections.length ? sections : [el("p", { class: "muted", text: "no interpreted SAE of this suite measured this expert" })]));
}

// The feature page's experts section: experts chosen more often than their base rate when the feature fires.
function featureExperts(record) {
  if (!Array.isArray(record.experts)) return null;
  const body = record.experts.length
    ? el("table", { id: "feature-experts" }, el("tr", {}, ...["expert", "P(expert | feature)", "P(expert)", "lift"].map((h) => el("th", { text: h }))),
      ...record.experts.map(([layer, expert, rate, base, lift]) => el("tr", {}, el("td", { class: "left" }, expertLink(layer, expert)),
        el("td", { text: pct(rate) }), el("td", { text: pct(base) }), el("td", { text: fmt(lift, 2) + "×" }))))
    : el("p", { class: "muted", text: "no expert is selected more often than its base rate when this feature fires (or it fired on too few tokens)" });
  return el("div", { id: "experts-of-feature" }, el("h2", { text: "Experts selected when this feature fires" }), body);
}
