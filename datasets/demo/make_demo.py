"""Regenerate datasets/demo/address.jsonl: 16 hand-specified waybill texts for the CPU demo.

    python datasets/demo/make_demo.py

The rows are written by hand-picked parts (no real person's data); the system prompt is the
address recipe's. The demo trains on these rows and evaluates on the same rows: on a tiny random
model the CPU analogue of "base 14% -> tuned 98%" is memorisation.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from swiftpipe.core import jsonl  # noqa: E402
from swiftpipe.task import messages  # noqa: E402
from swiftpipe.task.reference import ADDRESS_FIELDS, ADDRESS_SYSTEM_PROMPT  # noqa: E402

# (province, city, district, specific_location, name, phone, text template)
ROWS = [
    ("浙江省", "杭州市", "西湖区", "文三路90号东部软件园3号楼", "王伟", "13812345678", "收件人:{name}|电话:{phone}|{city}{district}{loc}"),
    ("北京市", "北京市", "朝阳区", "建国路88号SOHO现代城C座1205", "欧阳丽", "010-65432178", "{province}{district}{loc}，联系人：{name}，联系电话：{phone}"),
    ("广东省", "深圳市", "南山区", "科技园南区粤海街道高新南一道6号", "陈静", "075586001234", "{name} {phone} {city}{district}{loc}"),
    ("四川省", "成都市", "武侯区", "人民南路四段12号华西坝小区2栋", "索南扎西", "18980012345", "地址:{city}{district}{loc};收件者:{name};手机号:{phone}"),
    ("上海市", "上海市", "浦东新区", "张江路1000弄5号601室", "慕容秀英", "021-17613435", "tel: {phone}，{province}{district}{loc}，接收人 {name}"),
    ("湖北省", "武汉市", "洪山区", "珞喻路1037号华中科技大学东校区", "李强", "15927001234", "{city}{district}{loc}|{name}|MOBILE:{phone}"),
    ("江苏省", "南京市", "鼓楼区", "中山北路200号金茂广场B座", "司马娜", "13770012345", "收件人：{name}；{city}{district}{loc}；电话：{phone}"),
    ("天津市", "天津市", "和平区", "南京路189号津汇广场2座1801", "张磊", "02223301234", "{name},{phone},{province}{district}{loc}"),
    ("山东省", "济南市", "历下区", "泉城路180号齐鲁国际大厦", "赵敏", "0531-86012345", "联系电话 {phone} 地址 {city}{district}{loc} 联系人 {name}"),
    ("湖南省", "长沙市", "岳麓区", "麓山南路932号中南大学新校区", "刘洋", "17307311234", "{city}{district}{loc}，{name}，{phone}"),
    ("重庆市", "重庆市", "渝中区", "解放碑民族路188号环球金融中心", "诸葛杰", "023-63801234", "收件人:{name}\t电话:{phone}\t{province}{district}{loc}"),
    ("河南省", "郑州市", "金水区", "花园路39号河南省人民医院家属院", "杨艳", "13603710123", "手机号：{phone}|收件人：{name}|{city}{district}{loc}"),
    ("福建省", "厦门市", "思明区", "思明南路422号厦门大学芙蓉园", "林涛", "059222181234", "{name}；{phone}；{city}{district}{loc}"),
    ("陕西省", "西安市", "雁塔区", "小寨东路126号百隆广场", "上官芳", "18691801234", "地址：{city}{district}{loc}  收件人：{name}  电话：{phone}"),
    ("辽宁省", "大连市", "甘井子区", "软件园路8号大连软件园15号楼", "黄勇", "0411-84761234", "接收人{name},联系电话{phone},{city}{district}{loc}"),
    ("云南省", "昆明市", "五华区", "翠湖南路2号云南大学东陆园", "周娟", "15887101234", "{city}{district}{loc}:{name}:{phone}"),
]


def main() -> None:
    out = Path(__file__).with_name("address.jsonl")
    rows = []
    for province, city, district, loc, name, phone, template in ROWS:
        text = template.format(province=province, city=city, district=district, loc=loc, name=name, phone=phone)
        answer = dict(zip(ADDRESS_FIELDS, [province, city, district, loc, name, phone]))
        rows.append(messages.build(ADDRESS_SYSTEM_PROMPT, text, answer))
    jsonl.write_lines(out, rows)
    print(f"wrote {len(ROWS)} rows to {out}")


if __name__ == "__main__":
    main()
