// swiftpipe pages: the API key, calls to the gateway, the highlighted text and the answer form.
"use strict";

const COLORS = ["#ffd166", "#8fd3ff", "#b8f2a0", "#ffb3c7", "#d7b8ff", "#ffcf99", "#9ff0e0", "#e0e0a0",
                "#c6d8ff", "#ffc0a0"];
const KEY_NAME = "swiftpipe-key";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "bg") node.style.background = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = isError ? "status error" : "status";
}

// -- the key: typed once, kept for the browser session ----------------------------------------
function getKey() { return sessionStorage.getItem(KEY_NAME) || ""; }

function setupKey(onReady) {
  const input = document.getElementById("key");
  input.value = getKey() ? "••••••••" : "";
  document.getElementById("save-key").addEventListener("click", () => {
    if (input.value && !input.value.startsWith("•")) sessionStorage.setItem(KEY_NAME, input.value.trim());
    input.value = getKey() ? "••••••••" : "";
    onReady();
  });
  if (getKey()) onReady(); else setStatus("Type your API key (swiftpipe keys create) and press Use key.", false);
}

async function api(path, options) {
  const opts = Object.assign({headers: {}}, options || {});
  opts.headers = Object.assign({"Authorization": "Bearer " + getKey()}, opts.headers);
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.body = JSON.stringify(opts.json);
    opts.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, opts);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : ("HTTP " + response.status);
    const error = new Error(response.status === 401 ? message + " — check the key above" : message);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function loadVersions(select, withAuto) {
  const models = await api("/v1/models");
  const versions = models.data.filter((m) => m.id !== "auto");
  select.replaceChildren();
  if (withAuto) select.append(el("option", {value: "auto", text: "auto (rollout)"}));
  else select.append(el("option", {value: "", text: "all versions"}));
  for (const v of versions) select.append(el("option", {value: v.id, text: v.id + " (" + v.weight + "%)"}));
  return Object.fromEntries(versions.map((v) => [v.id, v]));
}

// -- what an answer says about the text -------------------------------------------------------
function isEntityAnswer(fields, version) {
  if (version && version.metric === "ner_f1") return true;
  return fields && typeof fields === "object" && Object.values(fields).length > 0 &&
    Object.values(fields).every((v) => Array.isArray(v));
}

function occurrences(text, value) {
  const found = [];
  if (typeof value !== "string" || !value) return found;
  let at = text.indexOf(value);
  while (at !== -1) { found.push(at); at = text.indexOf(value, at + value.length); }
  return found;
}

function fieldNames(fields, version) {
  const schema = version && version.schema;
  if (schema && schema.properties) return Object.keys(schema.properties);
  return fields && typeof fields === "object" ? Object.keys(fields) : [];
}

// Highlights every value of `fields` that occurs verbatim in `text`; returns the fields that do not.
function renderHighlight(container, legend, text, fields, version) {
  const names = fieldNames(fields, version);
  const spans = [];
  const missing = [];
  const entities = isEntityAnswer(fields, version);
  names.forEach((name, i) => {
    const value = fields ? fields[name] : undefined;
    const values = entities ? (Array.isArray(value) ? value : []) : [value];
    let any = false;
    for (const v of values) {
      for (const start of occurrences(text, v)) {
        spans.push({start, end: start + v.length, name, color: COLORS[i % COLORS.length]});
        any = true;
      }
    }
    const empty = value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length);
    if (!any && !empty) missing.push(name);
  });
  spans.sort((a, b) => a.start - b.start || (b.end - b.start) - (a.end - a.start));
  container.replaceChildren();
  let at = 0;
  for (const span of spans) {
    if (span.start < at) continue;  // overlaps an earlier highlight
    if (span.start > at) container.append(text.slice(at, span.start));
    container.append(el("mark", {"data-field": span.name, "data-start": String(span.start),
                                 "data-end": String(span.end), bg: span.color, title: span.name,
                                 text: text.slice(span.start, span.end)}));
    at = span.end;
  }
  if (at < text.length) container.append(text.slice(at));
  legend.replaceChildren();
  names.forEach((name, i) => legend.append(el("span", {bg: COLORS[i % COLORS.length], "data-legend": name, text: name})));
  return missing;
}

// A field is doubtful when the gateway flagged it below the version's accept threshold
// (low_confidence:<field>) or, without a threshold, when its confidence is under one half.
const DOUBTFUL = 0.5;

function isLowConfidence(name, p, flags) {
  if ((flags || []).includes("low_confidence:" + name)) return true;
  return typeof p === "number" && p < DOUBTFUL;
}

// An editable form of the answer: text inputs for strings, JSON for the rest; beside each field
// the probability the model gave its value (`confidence`, none without logprobs), low ones marked.
function renderForm(container, fields, version, missing, confidence, flags) {
  container.replaceChildren();
  const schema = (version && version.schema && version.schema.properties) || {};
  for (const name of fieldNames(fields, version)) {
    const value = fields ? fields[name] : undefined;
    const kind = (schema[name] && schema[name].type) || (typeof value === "string" ? "string" : "json");
    const input = kind === "string"
      ? el("input", {type: "text", "data-field": name, "data-kind": "string"})
      : el("textarea", {rows: "1", "data-field": name, "data-kind": "json"});
    input.value = kind === "string" ? (value == null ? "" : String(value)) : JSON.stringify(value === undefined ? null : value);
    const note = missing.includes(name)
      ? el("span", {class: "badge missing", "data-missing": name, text: "not in the text"})
      : el("span", {});
    const p = confidence ? confidence[name] : undefined;
    const shown = typeof p === "number"
      ? el("span", {class: "confidence" + (isLowConfidence(name, p, flags) ? " low" : ""), "data-confidence": name,
                    title: "the probability the model gave this value", text: p.toFixed(3)})
      : el("span", {class: "confidence none", "data-confidence": name, title: "no confidence (no logprobs)", text: "–"});
    container.append(el("div", {class: "form-row"}, el("label", {text: name}), input, shown, note));
  }
}

function readForm(container) {
  const fields = {};
  for (const input of container.querySelectorAll("[data-field]")) {
    const name = input.getAttribute("data-field");
    if (input.getAttribute("data-kind") === "string") fields[name] = input.value;
    else {
      try { fields[name] = JSON.parse(input.value); }
      catch (e) { throw new Error("field " + name + " is not valid JSON: " + e.message); }
    }
  }
  return fields;
}

function renderFlags(container, flags) {
  container.replaceChildren();
  if (!flags || !flags.length) container.append(el("span", {class: "badge", text: "no flags"}));
  for (const flag of flags || []) container.append(el("span", {class: "badge flag", "data-flag": flag, text: flag}));
}

async function sendFeedback(id, body) {
  return api("/v1/feedback", {json: Object.assign({id}, body)});
}
