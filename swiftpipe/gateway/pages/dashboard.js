// The dashboard: per version and day, requests, latency, flag rate and reviewed accuracy, drawn as SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(value) { return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%"; }
function num(value) { return value === null || value === undefined ? "–" : String(value); }

// A line chart: one line per version over the days; y from 0 to the largest value (or yMax).
function chart(svg, title, series, days, yMax, format) {
  svg.replaceChildren();
  const W = 520, H = 220, L = 48, R = 110, T = 24, B = 28;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.append(svgEl("text", {x: L, y: 16, "font-size": 13, "font-weight": "bold"}, title));
  const values = series.flatMap((s) => s.points.map((p) => p.y)).filter((y) => y !== null);
  const top = yMax || Math.max(1e-9, ...values);
  const x = (i) => L + (days.length <= 1 ? (W - L - R) / 2 : i * (W - L - R) / (days.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  svg.append(svgEl("line", {x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#999"}));
  svg.append(svgEl("text", {x: 4, y: y(top) + 4, "font-size": 10}, format(top)));
  svg.append(svgEl("text", {x: 4, y: y(0) + 4, "font-size": 10}, format(0)));
  days.forEach((day, i) => {
    if (days.length <= 8 || i % Math.ceil(days.length / 8) === 0) {
      svg.append(svgEl("text", {x: x(i) - 14, y: H - 8, "font-size": 9}, day.slice(5)));
    }
  });
  series.forEach((s, n) => {
    const color = COLORS[n % COLORS.length].replace("#ff", "#d0").replace("#8f", "#1f");
    const pts = s.points.map((p) => [days.indexOf(p.day), p.y]).filter((p) => p[1] !== null);
    if (pts.length > 1) {
      svg.append(svgEl("polyline", {fill: "none", stroke: color, "stroke-width": 2,
                                    points: pts.map((p) => x(p[0]) + "," + y(p[1])).join(" ")}));
    }
    for (const p of pts) {
      const dot = svgEl("circle", {cx: x(p[0]), cy: y(p[1]), r: 4, fill: color, "data-version": s.name});
      dot.append(svgEl("title", {}, s.name + " " + days[p[0]] + ": " + format(p[1])));
      svg.append(dot);
    }
    svg.append(svgEl("text", {x: W - R + 8, y: T + 14 * (n + 1), "font-size": 11, fill: color}, s.name));
  });
}

async function refresh() {
  const days = document.getElementById("days").value;
  try {
    const stats = await api("/v1/stats?days=" + days);
    const tbody = document.querySelector("#summary tbody");
    tbody.replaceChildren();
    const names = Object.keys(stats.versions);
    const allDays = [...new Set(names.flatMap((n) => Object.keys(stats.versions[n].days)))].sort();
    for (const name of names) {
      const t = stats.versions[name].total;
      const cell = (col, text) => el("td", {"data-col": col, text});
      tbody.append(el("tr", {"data-version": name}, el("td", {text: name}), cell("requests", num(t.requests)),
                      cell("p50", num(t.p50_ms)), cell("p95", num(t.p95_ms)), cell("flagged", pct(t.flagged)),
                      cell("invalid_json", pct(t.invalid_json)), cell("reviewed", num(t.reviewed)),
                      cell("reviewed_accuracy", pct(t.reviewed_accuracy)),
                      cell("reviewed_accuracy_ci", t.reviewed_accuracy_ci ? pct(t.reviewed_accuracy_ci[0]) + " – " +
                           pct(t.reviewed_accuracy_ci[1]) + " (" + t.audited + " audited)" : "–"),
                      cell("doubtful", t.doubtful_reviewed ? t.doubtful_errors + " errors in the " +
                           t.doubtful_reviewed + " most doubtful" : "–")));
    }
    const series = (key) => names.map((name) => ({
      name, points: Object.entries(stats.versions[name].days).map(([day, d]) => ({day, y: d[key]}))}));
    chart(document.getElementById("chart-requests"), "requests per day", series("requests"), allDays, null, (v) => String(Math.round(v)));
    chart(document.getElementById("chart-latency"), "latency p95 (ms)", series("p95_ms"), allDays, null, (v) => v.toFixed(0));
    chart(document.getElementById("chart-flagged"), "flagged answers", series("flagged"), allDays, 1, pct);
    chart(document.getElementById("chart-accuracy"), "reviewed accuracy (audit sample)", series("reviewed_accuracy"), allDays, 1, pct);
    setStatus(names.length ? "" : "no requests in this period", false);
  } catch (e) { setStatus(e.message, true); }
}

document.getElementById("refresh").addEventListener("click", refresh);
document.getElementById("days").addEventListener("change", refresh);
setupKey(refresh);
