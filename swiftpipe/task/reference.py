"""The reference tasks' fixed texts, written once: system prompts, answer fields, entity types.

Recipes carry their own copy of the system prompt (a recipe is a self-contained document); a test
checks that the shipped recipes agree with these constants.
"""

from __future__ import annotations

ADDRESS_FIELDS = ("province", "city", "district", "specific_location", "name", "phone")
ADDRESS_SYSTEM_PROMPT = (
    "你是一个专业的信息抽取助手，专门负责从中文文本中提取收件人的JSON信息，包含的Key有province（省份）、"
    "city（城市名称）、district（区县名称）、specific_location（街道、门牌号、小区、楼栋等详细信息）、"
    "name（收件人姓名）、phone（联系电话）"
)
# Address fields that are always copied verbatim from the text (the province is often inferred).
ADDRESS_VERBATIM_FIELDS = ("specific_location", "name", "phone")

CLUENER_TYPES = ("address", "book", "company", "game", "government", "movie", "name", "organization",
                 "position", "scene")
CLUENER_SYSTEM_PROMPT = (
    "你是一个命名实体识别助手。从用户给出的中文文本中找出以下类型的实体：address（地址）、book（书名）、"
    "company（公司）、game（游戏）、government（政府机构）、movie（电影）、name（人名）、organization（组织机构）、"
    "position（职位）、scene（景点）。以JSON输出，每个类型对应文本中出现的实体名称列表，没有则为空列表。"
)
