"""Markdown reports of an evaluation: the headline, per-field and NER tables, the misses, and the
base-vs-fine-tuned comparison."""

from __future__ import annotations

import json
from typing import Optional


def headline(metrics: dict) -> str:
    """One line for the console: exact match (and NER micro F1 when scored), invalid JSON, API errors."""
    line = f"exact match {metrics['exact_match']:.1%} ({metrics['correct']}/{metrics['n']})"
    if metrics.get("ner"):
        line += f", NER micro F1 {metrics['ner']['micro']['f1']:.1%}"
    return line + f", invalid JSON {metrics['invalid_json']}, API errors {metrics['api_errors']}"


def pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ner_table(scores: dict) -> str:
    rows = ["| entity type | precision | recall | F1 | gold | predicted |", "|---|---|---|---|---|---|"]
    for kind, s in scores["per_type"].items():
        rows.append(f"| {kind} | {pct(s['precision'])} | {pct(s['recall'])} | {pct(s['f1'])} | {s['gold']} | "
                    f"{s['predicted']} |")
    micro, macro = scores["micro"], scores["macro"]
    rows.append(f"| **micro** | {pct(micro['precision'])} | {pct(micro['recall'])} | **{pct(micro['f1'])}** | "
                f"{micro['gold']} | {micro['predicted']} |")
    rows.append(f"| macro | {pct(macro['precision'])} | {pct(macro['recall'])} | {pct(macro['f1'])} | | |")
    return "\n".join(rows)


def report_markdown(metrics: dict, records: list[dict], *, title: str, examples: int = 10) -> str:
    lines = [
        f"# Evaluation: {title}",
        "",
        f"- rows: {metrics['n']}",
        f"- exact match: **{pct(metrics['exact_match'])}** ({metrics['correct']}/{metrics['n']})",
        *([f"- NER micro F1: **{pct(metrics['ner']['micro']['f1'])}**"] if metrics.get("ner") else []),
        f"- invalid JSON: {metrics['invalid_json']}; API errors: {metrics['api_errors']}; "
        f"think blocks stripped: {metrics['think_blocks']}",
    ]
    if metrics.get("latency_p50_s") is not None:
        lines.append(f"- latency p50 / p95: {metrics['latency_p50_s']:.3f} s / {metrics['latency_p95_s']:.3f} s")
    if metrics.get("requests_per_s"):
        lines.append(f"- throughput: {metrics['requests_per_s']:.1f} requests/s")
    if metrics.get("ner"):
        lines += ["", ner_table(metrics["ner"])]
    if metrics["per_field"]:
        lines += ["", "| field | accuracy |", "|---|---|"]
        lines += [f"| {name} | {pct(acc)} |" for name, acc in metrics["per_field"].items()]
    wrong = [r for r in records if not r["correct"]][:examples]
    if wrong:
        lines += ["", f"## First {len(wrong)} misses", ""]
        for r in wrong:
            if r["error"]:
                got = f"API error: {r['error']}"
            elif r["prediction"] is None:
                got = f"invalid JSON: {str(r['raw'])[:200]!r}"
            else:
                got = json.dumps(r["prediction"], ensure_ascii=False)
            lines += [f"- input: {r['input']}", f"  - gold: {json.dumps(r['gold'], ensure_ascii=False)}",
                      f"  - got:  {got}"]
    return "\n".join(lines) + "\n"


def comparison_markdown(base: dict, tuned: dict, base_records: list[dict], tuned_records: list[dict],
                        *, examples: int = 20) -> str:
    """Base vs fine-tuned side by side, plus the rows whose outcome changed."""
    lines = [
        "# Base vs fine-tuned",
        "",
        "| metric | base | fine-tuned |",
        "|---|---|---|",
        f"| exact match | {pct(base['exact_match'])} ({base['correct']}/{base['n']}) | "
        f"{pct(tuned['exact_match'])} ({tuned['correct']}/{tuned['n']}) |",
        f"| invalid JSON | {base['invalid_json']} | {tuned['invalid_json']} |",
        f"| API errors | {base['api_errors']} | {tuned['api_errors']} |",
    ]
    if tuned.get("ner") and base.get("ner"):
        lines.append(f"| NER micro F1 | {pct(base['ner']['micro']['f1'])} | {pct(tuned['ner']['micro']['f1'])} |")
    for name in tuned["per_field"]:
        lines.append(f"| field: {name} | {pct(base['per_field'].get(name))} | {pct(tuned['per_field'][name])} |")
    by_key = {r["key"]: r for r in base_records}
    pairs = [(by_key[r["key"]], r) for r in tuned_records if r["key"] in by_key]
    fixed = [(b, t) for b, t in pairs if t["correct"] and not b["correct"]]
    broken = [(b, t) for b, t in pairs if not t["correct"] and b["correct"]]
    lines += ["", f"Outcome changed: {len(fixed)} fixed by fine-tuning, {len(broken)} broken by it."]
    for label, changed in (("Fixed", fixed), ("Broken", broken)):
        if not changed:
            continue
        lines += ["", f"## {label} (first {min(len(changed), examples)})", ""]
        for b, t in changed[:examples]:
            lines += [f"- input: {t['input']}",
                      f"  - gold: {json.dumps(t['gold'], ensure_ascii=False)}",
                      f"  - base: {b['raw']!r}" if b["prediction"] is None else
                      f"  - base: {json.dumps(b['prediction'], ensure_ascii=False)}",
                      f"  - fine-tuned: {json.dumps(t['prediction'], ensure_ascii=False)}"]
    return "\n".join(lines) + "\n"
