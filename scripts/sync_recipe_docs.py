"""Rewrite the `# doc (type, default)` comment above every key of a recipe from the schema.

    python scripts/sync_recipe_docs.py recipes/*.yaml          # rewrite in place
    python scripts/sync_recipe_docs.py --check recipes/*.yaml  # list disagreements, exit 1 if any

The schema's field descriptions are the one source of the recipe documentation: the line directly
above a key is `# <description> (<type>, <default>)`. A recipe-specific note stays as its own
comment line above that one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftpipe.recipe.explain import keys  # noqa: E402

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")
DOC = re.compile(r"^\s*#\s?(?P<text>.*?)\s*(\((?P<type>[a-z|]+), (?P<default>.*)\))?\s*$")


def key_paths(lines: list[str]) -> list[tuple[int, str]]:
    """(line index, dotted key) for the recipe's schema keys (sections and nested dicts skipped)."""
    found, section = [], None
    for i, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, rest = len(m["indent"]), m["key"], m["rest"].split("#")[0].strip()
        if indent == 0:
            section = key if not rest else None
            if rest:
                found.append((i, key))
        elif indent == 2 and section:
            found.append((i, f"{section}.{key}"))
    return found


def _same(a: str, b: str) -> bool:
    norm = [re.sub(r"[\W_]+", " ", x).strip().lower() for x in (a, b)]
    return norm[0] in norm[1] or difflib.SequenceMatcher(None, *norm).ratio() > 0.8


def sync(path: Path, check: bool) -> list[str]:
    docs = {k.key: k for k in keys()}
    lines = path.read_text(encoding="utf-8").splitlines()
    problems, out = [], []
    for i, key in key_paths(lines):
        doc = docs.get(key)
        if doc is None:
            problems.append(f"{path}:{i + 1}: {key} is not a recipe key")
            continue
        want = " " * (2 if "." in key else 0) + "# " + doc.comment()
        above = lines[i - 1] if i else ""
        if above.strip() == want.strip():
            continue
        problems.append(f"{path}:{i + 1}: {key}: comment above should be '{want.strip()}'")
        if not check:
            out.append((i, want, above))
    if not check and out:
        for i, want, above in reversed(out):
            m = DOC.match(above) if above.lstrip().startswith("#") else None
            if m:
                note = m["text"]
                keep_note = note and not _same(note, docs[dict(key_paths(lines))[i]].description)
                lines[i - 1:i] = ([above[: len(above) - len(above.lstrip())] + "# " + note] if keep_note else []) + [want]
            else:
                lines.insert(i, want)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("recipes", nargs="+", type=Path)
    args = parser.parse_args()
    problems = [p for recipe in args.recipes for p in sync(recipe, args.check)]
    for p in problems:
        print(p)
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
