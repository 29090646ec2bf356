"""Build swiftpipe/data/divisions.json, the province → city → district table the synthesizer uses.

    python scripts/build_divisions.py [PCA_JSON]

PCA_JSON defaults to ../shared/data/admin/modood/pca.json (modood/Administrative-divisions-of-China,
2023 release, WTFPL; the same hierarchy is public in many places). The shipped table keeps only
names, as facts, in swiftpipe's own format, with the source's placeholders resolved:
  - municipalities (北京市, 天津市, 上海市, 重庆市): the city is the province itself, and the
    placeholders 市辖区 / 县 are merged into that one city;
  - 省直辖县级行政区划 / 自治区直辖县级行政区划 (e.g. 仙桃市, 石河子市) have no city level: left out,
    so that every shipped triple is a real province → city → district path;
  - cities without districts (东莞市, 中山市, 儋州市, ...) keep their towns as the district level,
    as waybills write them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "admin" / "modood" / "pca.json"
OUT = REPO / "swiftpipe" / "data" / "divisions.json"
MUNICIPALITY_PLACEHOLDERS = {"市辖区", "县"}
NO_CITY_LEVEL = {"省直辖县级行政区划", "自治区直辖县级行政区划"}


def build(source: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    table: dict[str, dict[str, list[str]]] = {}
    for province, cities in source.items():
        out: dict[str, list[str]] = {}
        for city, districts in cities.items():
            if city in NO_CITY_LEVEL:
                continue
            name = province if city in MUNICIPALITY_PLACEHOLDERS else city
            merged = out.setdefault(name, [])
            merged.extend(d for d in districts if d not in merged)
        table[province] = {c: ds for c, ds in out.items() if ds}
    return table


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    if not source.exists():
        raise SystemExit(f"{source} not found: pass the path of pca.json (province → city → [district])")
    table = build(json.loads(source.read_text(encoding="utf-8")))
    OUT.write_text(json.dumps(table, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    cities = sum(len(c) for c in table.values())
    districts = sum(len(d) for c in table.values() for d in c.values())
    print(f"wrote {OUT.relative_to(REPO)}: {len(table)} provinces, {cities} cities, {districts} districts")


if __name__ == "__main__":
    main()
