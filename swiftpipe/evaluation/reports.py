"""Markdown reports of an evaluation: the headline, per-field and NER tables, how fields are wrong,
the calibration of confidence (reliability table and diagram, the auto-accept threshold), the
misses, and the base-vs-fine-tuned comparison with its McNemar test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from swiftpipe.evaluation.calibration import mcnemar_exact

RELIABILITY_PNG = "reliability.png"  # beside report.md
AGGREGATE_WORDS = {"min": "the probability of the least likely", "prob": "the product (P(exact value)) of the probabilities",
                   "geo": "the geometric mean of the probabilities"}


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


def ci(interval: Optional[Sequence[Optional[float]]]) -> str:
    """` (95% CI 91.2–97.0%)`, or nothing without an interval."""
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    return f" (95% CI {100 * interval[0]:.1f}–{100 * interval[1]:.1f}%)"


def accept_sentence(conf: Optional[dict]) -> str:
    """The operator's sentence: "at t = 0.93, 87% of rows need no review, and those are 99.4% exact"."""
    if not conf:
        return "confidence: the server returned no logprobs; no accept threshold"
    if conf.get("accept_threshold") is None:
        return (f"confidence: no threshold reaches {pct(conf['accept_target'])} exact match on this test set: "
                f"every row needs review (row-confidence AUROC {_num(conf.get('auroc'))})")
    return (f"at t = {conf['accept_threshold']:.4g}, {pct(conf['coverage'])}{ci(conf.get('coverage_ci'))} of rows "
            f"need no review, and those are {pct(conf['accepted_exact_match'])}"
            f"{ci(conf.get('accepted_exact_match_ci'))} exact (target {pct(conf['accept_target'])}; "
            f"row-confidence AUROC {_num(conf.get('auroc'))})")


def _num(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def calibration_section(conf: Optional[dict], figure: Optional[str]) -> list[str]:
    lines = ["", "## Calibration of confidence", ""]
    if not conf:
        return lines + ["The server returned no token logprobs: no confidence, no accept threshold "
                        "(eval.confidence off, or a server without logprobs)."]
    by = conf["auroc_by_aggregate"]
    fields_by = conf["field_auroc_by_aggregate"]
    lines += [
        f"A field's confidence = {AGGREGATE_WORDS.get(conf['aggregate'], conf['aggregate'])} of the tokens of its "
        f"value; row confidence = the least confident field. {conf['rows_scored']} of the rows have one.",
        "",
        f"- **{accept_sentence(conf)}**; {conf['accepted']} rows accepted. Intervals: percentile bootstrap over "
        f"the test rows ({conf['resamples']} resamples, the threshold held fixed): with few test rows they are wide, "
        f"and the threshold itself is fitted on these rows.",
        f"- AUROC of row confidence for exact match: **{_num(conf['auroc'])}** "
        f"(product {_num(by['prob'])}, minimum token {_num(by['min'])}, geometric mean {_num(by['geo'])}); "
        f"of field confidence for field correctness, all fields: product {_num(fields_by['prob'])}, "
        f"minimum {_num(fields_by['min'])}, geometric mean {_num(fields_by['geo'])}.",
        f"- expected calibration error: {_num(conf['ece'])}",
        "",
        "| field | AUROC: product | minimum token | geometric mean |", "|---|---|---|---|",
    ]
    for name, entry in conf["fields"].items():
        a = entry["auroc_by_aggregate"]
        lines.append(f"| {name} | {_num(a['prob'])} | {_num(a['min'])} | {_num(a['geo'])} |")
    lines += ["", "| row confidence | rows | mean confidence | exact match |", "|---|---|---|---|"]
    for b in conf["reliability"]:
        if b["count"]:
            lines.append(f"| {b['lo']:.1f}–{b['hi']:.1f} | {b['count']} | {_num(b['mean_confidence'])} | "
                         f"{pct(b['accuracy'])} |")
    if figure:
        lines += ["", f"![reliability diagram]({figure})"]
    return lines


def reliability_png(metrics: dict, path: Path) -> Optional[str]:
    """The reliability diagram (confidence bins → exact match, with counts) as a PNG; its file name
    for the report, or None without confidence."""
    conf = metrics.get("confidence")
    if not conf:
        path.unlink(missing_ok=True)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in conf["reliability"] if b["count"]]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=0.09, color="#4477aa",
           label="exact match of the bin's rows")
    for b in bins:
        ax.annotate(str(b["count"]), ((b["lo"] + b["hi"]) / 2, b["accuracy"]), ha="center", va="bottom", fontsize=8)
    if conf.get("accept_threshold") is not None:
        ax.axvline(conf["accept_threshold"], color="#ee6677", linewidth=1.5,
                   label=f"accept threshold {conf['accept_threshold']:.3g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("row confidence")
    ax.set_ylabel("exact match")
    ax.set_title(f"reliability (AUROC {_num(conf['auroc'])}, numbers: rows)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def outcomes_table(metrics: dict) -> list[str]:
    outcomes: dict[str, dict[str, int]] = metrics.get("field_outcomes") or {}
    if not outcomes:
        return []
    lines = ["", "| field | accuracy | correct | wrong value | omitted | invented |", "|---|---|---|---|---|---|"]
    for name, c in outcomes.items():
        lines.append(f"| {name} | {pct(metrics['per_field'].get(name))}{ci((metrics.get('per_field_ci') or {}).get(name))} "
                     f"| {c['correct']} | {c['wrong']} | {c['omitted']} | {c['invented']} |")
    return lines + ["", "omitted: gold has a value, the answer none; invented: gold is empty and the answer is not, "
                        "or a verbatim field's value is not in the text."]


def report_markdown(metrics: dict, records: list[dict], *, title: str, examples: int = 10,
                    figure: Optional[str] = None) -> str:
    lines = [
        f"# Evaluation: {title}",
        "",
        f"- rows: {metrics['n']}",
        f"- exact match: **{pct(metrics['exact_match'])}** ({metrics['correct']}/{metrics['n']})"
        f"{ci(metrics.get('exact_match_ci'))}",
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
    if metrics.get("field_outcomes"):
        lines += outcomes_table(metrics)
    elif metrics["per_field"]:
        lines += ["", "| field | accuracy |", "|---|---|"]
        lines += [f"| {name} | {pct(acc)} |" for name, acc in metrics["per_field"].items()]
    if "confidence" in metrics:
        lines += calibration_section(metrics["confidence"], figure)
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
    lines += ["", f"Outcome changed: {len(fixed)} fixed by fine-tuning, {len(broken)} broken by it "
                  f"({mcnemar_line(len(broken), len(fixed))})."]
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


def mcnemar_line(only_a: int, only_b: int) -> str:
    """"exact McNemar p = 0.035" for the flips of two models on the same rows (the chance of so
    lopsided a split if neither were better)."""
    test = mcnemar_exact([True] * only_a + [False] * only_b, [False] * only_a + [True] * only_b)
    return f"exact McNemar test on the flips: p = {test.p_value:.3g}" + (
        "; a difference this small can be chance" if test.p_value >= 0.05 else "")

