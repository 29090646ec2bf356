"""Synthetic Chinese waybill texts with gold JSON for the address-extraction task.

Every row is drawn from one `random.Random(seed)` stream, row after row, so the first N rows of a
larger run with the same seed are the same rows, and the same seed gives the same bytes.
The (province, city, district) triple always comes from the shipped division table
(swiftpipe/data/divisions.json); specific_location, name and phone are written verbatim into
the text. As in the real test data, the province is written only for municipalities, where
city == province.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, TextIO

from swiftpipe.task.reference import ADDRESS_FIELDS, ADDRESS_SYSTEM_PROMPT

__all__ = ["ADDRESS_FIELDS", "ADDRESS_SYSTEM_PROMPT", "write_samples", "samples"]

DIVISIONS = Path(__file__).with_name("divisions.json")

SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
    "姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
COMPOUND_SURNAMES = ["欧阳", "慕容", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "令狐", "夏侯",
                     "长孙", "宇文", "司徒", "端木", "南宫", "独孤", "西门"]
GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红梅鹏辉建国志强文博子涵浩然欣怡宇轩雨桐"
             "思远佳琪俊杰梓萱一鸣晓东海燕春雷振华")
MINORITY_NAMES = ["索南扎西", "扎西顿珠", "次仁卓玛", "格桑梅朵", "达瓦次仁", "阿依古丽", "热依拉", "巴特尔",
                  "乌兰图雅", "其其格", "努尔江", "古丽娜尔", "阿不都热合曼", "德吉央宗", "买买提江", "斯琴高娃",
                  "旦增尼玛", "朝鲁门", "木合塔尔", "白玛措姆"]
ROAD_STEMS = ["人民", "解放", "建设", "中山", "和平", "新华", "胜利", "文化", "长江", "黄河", "光明", "幸福", "东风",
              "朝阳", "青年", "学府", "科技", "工业", "滨江", "湖滨", "迎宾", "金桥", "世纪", "凤凰", "花园", "振兴",
              "团结", "友谊", "民主", "育才", "北京", "南京", "延安", "同心", "望江", "锦江", "江南", "平安"]
ROAD_SUFFIXES = ["路", "街", "大道", "大街", "巷", "东路", "西路", "南路", "北路", "中路"]
ESTATE_STEMS = ["阳光", "金色", "锦绣", "碧桂园", "万科", "保利", "绿地", "恒大", "华府", "名都", "御景",
                "龙湖", "融创", "世茂", "新城", "紫金", "东方", "盛世", "香榭", "海棠", "丽景", "书香", "枫林"]
ESTATE_SUFFIXES = ["小区", "花园", "公寓", "家园", "苑", "大厦", "广场", "新村", "城", "雅居"]
BUILDING_UNITS = ["栋", "号楼", "幢", "座"]
VILLAGE_PARTS = ["镇", "乡", "街道"]
NAME_LABELS = ["收件人", "收件者", "接收人", "联系人", "收货人", "姓名", "name", "Name"]
PHONE_LABELS = ["电话", "联系电话", "手机号", "手机", "电话号码", "MOBILE", "tel", "Tel", "TEL", "phone"]
ADDRESS_LABELS = ["地址", "收货地址", "详细地址", "收件地址", "address"]
LABEL_SEPARATORS = [":", "：", ": ", " ", "", "：", ":"]
FIELD_SEPARATORS = ["|", ",", ";", "，", "；", " ", "\t", "  ", "/", "、", "| "]
MOBILE_PREFIXES = ["13", "14", "15", "16", "17", "18", "19"]
AREA_CODES = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029", "0311", "0351", "0371",
              "0431", "0451", "0471", "0531", "0551", "0571", "0591", "0731", "0771", "0791", "0851", "0871",
              "0898", "0931", "0951", "0971", "0991", "0755", "0512", "0574", "0592"]
MUNICIPALITIES = {"北京市", "天津市", "上海市", "重庆市"}


@lru_cache(maxsize=1)
def division_table() -> dict[str, dict[str, list[str]]]:
    return json.loads(DIVISIONS.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def division_triples() -> tuple[tuple[str, str, str], ...]:
    return tuple((p, c, d) for p, cities in division_table().items() for c, ds in cities.items() for d in ds)


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10**n)) if n > 0 else ""


def make_phone(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:  # mobile, 11 digits
        return rng.choice(MOBILE_PREFIXES) + _digits(rng, 9)
    if kind < 0.75:  # landline with area code and a dash: 010-12345678, 0571-8765432
        code = rng.choice(AREA_CODES)
        return f"{code}-{_digits(rng, 11 - len(code) if len(code) == 3 else 7)}"
    return _digits(rng, rng.choice((10, 11, 12)))  # bare 10-12 digits, often not starting with 1


def make_name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.08:
        return rng.choice(MINORITY_NAMES)
    surname = rng.choice(COMPOUND_SURNAMES) if kind < 0.18 else rng.choice(SURNAMES)
    given = rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
    return surname + given


def make_location(rng: random.Random) -> str:
    if rng.random() < 0.15:  # rural: 某镇某村某组
        return (rng.choice(ROAD_STEMS) + rng.choice(VILLAGE_PARTS) + rng.choice(ESTATE_STEMS) + "村"
                + f"{rng.randint(1, 12)}组{rng.randint(1, 99)}号")
    parts = [rng.choice(ROAD_STEMS), rng.choice(ROAD_SUFFIXES), f"{rng.randint(1, 999)}号"]
    if rng.random() < 0.7:
        parts += [rng.choice(ESTATE_STEMS), rng.choice(ESTATE_SUFFIXES)]
        if rng.random() < 0.75:
            parts.append(f"{rng.randint(1, 32)}{rng.choice(BUILDING_UNITS)}")
            if rng.random() < 0.5:
                parts.append(f"{rng.randint(1, 6)}单元")
            parts.append(f"{rng.randint(1, 33)}{rng.randint(1, 8):02d}室" if rng.random() < 0.7
                         else f"{rng.randint(101, 2808)}")
    return "".join(parts)


def _labelled(rng: random.Random, labels: list[str], value: str, p_label: float) -> str:
    if rng.random() < p_label:
        return rng.choice(labels) + rng.choice(LABEL_SEPARATORS) + value
    return value


def make_sample(rng: random.Random, triples: tuple[tuple[str, str, str], ...]) -> tuple[str, dict[str, str]]:
    """One (text, gold answer) pair."""
    province, city, district = triples[rng.randrange(len(triples))]
    location, name, phone = make_location(rng), make_name(rng), make_phone(rng)
    address = (province if province in MUNICIPALITIES else city) + district + location
    fields = [
        _labelled(rng, NAME_LABELS, name, 0.6),
        _labelled(rng, PHONE_LABELS, phone, 0.6),
        _labelled(rng, ADDRESS_LABELS, address, 0.3),
    ]
    rng.shuffle(fields)
    separator = rng.choice(FIELD_SEPARATORS)
    text = separator.join(fields)
    gold = {"province": province, "city": city, "district": district, "specific_location": location,
            "name": name, "phone": phone}
    return text, gold


def samples(n: int, seed: int) -> Iterator[tuple[str, dict[str, str]]]:
    rng = random.Random(seed)
    triples = division_triples()
    for _ in range(n):
        yield make_sample(rng, triples)


def line_prefix(system_prompt: Optional[str]) -> str:
    system = ('{"role":"system","content":' + json.dumps(system_prompt, ensure_ascii=False) + "},") if system_prompt else ""
    return '{"messages":[' + system + '{"role":"user","content":'


def messages_line(prefix: str, text: str, gold: dict) -> str:
    """One ms-swift messages JSONL line; the assistant turn is compact JSON (what the model learns)."""
    answer = json.dumps(gold, ensure_ascii=False, separators=(",", ":"))
    return (prefix + json.dumps(text, ensure_ascii=False) + '},{"role":"assistant","content":'
            + json.dumps(answer, ensure_ascii=False) + "}]}\n")


def write_samples(out: TextIO, n: int, seed: int, system_prompt: Optional[str] = ADDRESS_SYSTEM_PROMPT) -> int:
    prefix = line_prefix(system_prompt)
    count = 0
    for text, gold in samples(n, seed):
        out.write(messages_line(prefix, text, gold))
        count += 1
    return count
