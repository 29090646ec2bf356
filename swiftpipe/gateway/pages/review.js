// The review queue: one answer at a time, the most doubtful first (invalid, then lowest confidence),
// one in ten from the random audit sample (marked); a = accept, e = edit, Ctrl+Enter = save, s = skip.
"use strict";

let versions = {};
let item = null;
let skipped = [];
let reviewed = 0;

async function ready() {
  try {
    versions = await loadVersions(document.getElementById("version"), false);
    await next();
  } catch (e) { setStatus(e.message, true); }
}

async function next() {
  const params = new URLSearchParams({version: document.getElementById("version").value,
                                      flag: document.getElementById("flag").value.trim(), exclude: skipped.join(",")});
  try {
    const answer = await api("/v1/review/next?" + params.toString());
    document.getElementById("remaining").textContent =
      answer.remaining.flagged + " flagged, " + answer.remaining.unflagged + " unflagged to review (" +
      answer.remaining.audit + " in the audit sample)";
    item = answer.request;
    document.getElementById("item").hidden = !item;
    document.getElementById("empty").hidden = !!item;
    if (!item) return;
    const version = versions[item.version];
    document.getElementById("item-id").textContent = item.id;
    document.getElementById("item-version").textContent = item.version;
    renderFlags(document.getElementById("flags"), item.flags);
    document.getElementById("audit").hidden = !item.audit;
    document.getElementById("item-confidence").textContent =
      item.row_confidence === null || item.row_confidence === undefined ? "–" : item.row_confidence.toFixed(3);
    const missing = renderHighlight(document.getElementById("highlight"), document.getElementById("legend"),
                                    item.input || "", item.fields || {}, version);
    renderForm(document.getElementById("form"), item.fields || {}, version, missing, item.confidence, item.flags);
    setStatus("", false);
  } catch (e) { setStatus(e.message, true); }
}

async function decide(body) {
  if (!item) return;
  try {
    const stored = await sendFeedback(item.id, body);
    reviewed += 1;
    document.getElementById("done").textContent = reviewed + " reviewed (" + item.id + ": " + stored.verdict + ")";
    await next();
  } catch (e) { setStatus(e.message, true); }
}

function accept() { decide({verdict: "correct"}); }
function save() {
  let fields;
  try { fields = readForm(document.getElementById("form")); } catch (e) { setStatus(e.message, true); return; }
  decide({fields});
}
function skip() { if (item) { skipped.push(item.id); next(); } }

document.getElementById("next").addEventListener("click", () => { skipped = []; next(); });
document.getElementById("version").addEventListener("change", () => { skipped = []; next(); });
document.getElementById("accept").addEventListener("click", accept);
document.getElementById("save").addEventListener("click", save);
document.getElementById("skip").addEventListener("click", skip);
document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); save(); return; }
  if (typing) { if (event.key === "Escape") document.activeElement.blur(); return; }
  if (event.key === "a") accept();
  else if (event.key === "s") skip();
  else if (event.key === "e") {
    const first = document.querySelector("#form [data-field]");
    if (first) { event.preventDefault(); first.focus(); }
  }
});
setupKey(ready);
