// The browse page's coverage table: a row per class, an indented "= alias" row per alias, a cut column
// under a per-class quota, and the rules behind the flags. Loaded before app.js, whose helpers ($, el,
// fmt, anchor) it uses when called; like app.js, every string goes in through textContent.
"use strict";

// "How much is there?": the estimated corpus pairs above the count's similarity, "\u2265" when only a lower bound.
const pairsAbove = (c) => (c.pairs_above == null ? "\u2013"
  : (c.pairs_above_lower_bound ? "\u2265" : "") + c.pairs_above.toLocaleString());

function coverageFlags(c) {
  const flags = [];
  if (c.low_coverage) flags.push("low coverage");
  if (c.not_covered) flags.push("not covered");
  if (c.almost_nothing) flags.push("almost nothing");
  if (c.k_too_small) flags.push("k too small");
  return flags;
}

// One indented, dimmed row per alias under its class: hits, unique, the pairs only it found among its class's
// names (in the excl. column), its coverage, WEAK when it found nothing or scores well below the class name.
function aliasRow(a, quota) {
  const tr = el("tr", "alias" + (a.weak ? " weak" : ""));
  tr.dataset.alias = a.alias;
  const name = el("td", "alias-name", a.alias);
  name.title = `alias: ${a.queries} queries`;
  const only = el("td", "only", String(a.only));
  only.title = "pairs only this alias found among its class's names";
  const flags = el("td", "flags");
  if (a.weak) {
    const badge = el("span", "badge warn", "WEAK");
    badge.title = a.coverage == null ? "this alias adds no pair to the subset"
      : "its best pairs score well below the class name's: it may retrieve something else";
    flags.append(badge);
  }
  tr.append(name, el("td", "hits", String(a.hits)), el("td", "unique", String(a.unique)), only,
    ...(quota ? [el("td", "cut")] : []), el("td", "coverage", fmt(a.coverage)),
    ...Array.from({ length: 5 }, () => el("td")), flags);
  return tr;
}

function renderQuota(s) {
  const line = $("quota");
  line.hidden = !s.per_class;
  line.textContent = s.per_class
    ? `Quota ${s.per_class.toLocaleString()} per class: ${(s.quota_cut ?? 0).toLocaleString()} class labels cut, ` +
      `${(s.quota_rows_dropped ?? 0).toLocaleString()} pairs left the subset (every class that found them cut them), ` +
      `${(s.rows ?? 0).toLocaleString()} pairs remain.`
    : "";
}

function renderCoverage(report) {
  const s = report.summary || {};
  const quota = Boolean(s.per_class);
  const names = s.aliases ? ` + ${s.aliases} alias${s.aliases > 1 ? "es" : ""} = ${s.classes + s.aliases} names` : "";
  $("totals").textContent = `${(s.rows ?? 0).toLocaleString()} pairs from ${s.queries} queries ` +
    `(${s.classes} classes${names} \u00d7 ${s.templates} templates, k=${s.k}, ${s.mode}) \u00b7 ` +
    (s.examples ? `+ ${s.examples} example image${s.examples > 1 ? "s" : ""} (${s.example_mode}) \u00b7 ` : "") +
    `${(s.hits ?? 0).toLocaleString()} hits \u00b7 ${s.near_duplicates_collapsed ?? 0} near-duplicates collapsed \u00b7 ${s.seconds} s`;
  $("warnings").replaceChildren(...(report.warnings || []).map((w) => el("li", null, w)));
  renderQuota(s);
  $("cut-col").hidden = !quota;
  $("coverage").tBodies[0].replaceChildren(...(report.classes || []).flatMap((c, i) => {
    const tr = el("tr", "class" + (c.not_covered ? " low uncovered" : c.low_coverage ? " low" : ""));
    tr.dataset.class = c.name;
    const name = el("td");
    const link = el("a", null, c.name);
    link.href = "#" + anchor(i);
    name.append(link);
    tr.append(name, ...[c.hits, c.unique, c.exclusive].map((v) => el("td", null, String(v))),
      ...(quota ? [el("td", "cut", String(c.cut ?? 0))] : []),
      ...[c.coverage, c.p10, c.p50, c.p90, c.max].map((v) => el("td", null, fmt(v))),
      el("td", "count", pairsAbove(c)), el("td", "flags", coverageFlags(c).join(" \u00b7 ")));
    return [tr, ...(c.aliases || []).map((a) => aliasRow(a, quota))];
  }));
  const rules = [];
  if (report.low_coverage_rule) rules.push("Low coverage (relative): " + report.low_coverage_rule + ".");
  if (report.absolute_coverage_rule && s.coverage_cut != null) {
    const at = Object.entries(s.count_similarity || {}).map(([m, v]) => `${m} ${fmt(v)}`).join(", ");
    rules.push(`Not covered (absolute, cut ${fmt(s.coverage_cut)}): ${report.absolute_coverage_rule}. ` +
      `Pairs \u2265 cut: corpus pairs at similarity ${at} (${s.count_method}); \u2265 marks a lower bound.`);
  }
  $("rule").textContent = rules.join(" ");
  $("summary").hidden = false;
}
