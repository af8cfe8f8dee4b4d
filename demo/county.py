"""A county the size of Dangtu in 2019 (DOMAIN.md): 13 urban communities, their grids, 10 departments, 45 cadres."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

CITY = {"id": "maanshan", "kind": "city", "name": "马鞍山市"}
DISTRICT = {"id": "dangtu", "kind": "district", "parent": "maanshan", "name": "当涂县"}
STREETS = [
    {"id": "gushu", "kind": "street", "parent": "dangtu", "name": "姑孰镇"},
    {"id": "taibai", "kind": "street", "parent": "dangtu", "name": "太白镇"},
]
COMMUNITIES = [
    ("tishu", "提署社区", "gushu"),
    ("qingshan", "青山社区", "gushu"),
    ("hudong", "湖东社区", "gushu"),
    ("guxi", "姑溪社区", "gushu"),
    ("nanjin", "南津社区", "gushu"),
    ("binjiang", "滨江社区", "gushu"),
    ("jinzhu", "金柱社区", "gushu"),
    ("chengnan", "城南社区", "gushu"),
    ("chengbei", "城北社区", "gushu"),
    ("daqiao", "大桥社区", "taibai"),
    ("baizhu", "白纻社区", "taibai"),
    ("xinshi", "新市社区", "taibai"),
    ("caishi", "采石社区", "taibai"),
]
DEPARTMENTS = [
    ("PSB", "县公安局城关派出所"),
    ("EDU", "县教育局"),
    ("UNION", "县总工会"),
    ("BANK", "当涂农商银行"),
    ("REDCROSS", "县红十字会"),
    ("URBAN", "县城市管理局"),
    ("HOUSING", "县住房和城乡建设局"),
    ("WATER", "当涂水务公司"),
    ("CIVIL", "县民政局"),
    ("HEALTH", "县卫生健康委"),
]
CATEGORIES: list[dict[str, Any]] = [
    {
        "code": "drainage",
        "name": "下水道堵塞",
        "duty": "department",
        "departments": ["HOUSING"],
        "deadline_class": "utilities",
    },
    {
        "code": "water_outage",
        "name": "停水",
        "duty": "department",
        "departments": ["WATER"],
        "deadline_class": "utilities",
    },
    {
        "code": "public_security",
        "name": "治安隐患",
        "duty": "department",
        "departments": ["PSB"],
        "deadline_class": "normal",
    },
    {
        "code": "street_vending",
        "name": "占道经营",
        "duty": "department",
        "departments": ["URBAN"],
        "deadline_class": "normal",
    },
    {
        "code": "school_safety",
        "name": "校园周边安全",
        "duty": "department",
        "departments": ["EDU", "PSB"],
        "deadline_class": "normal",
    },
    {
        "code": "old_housing",
        "name": "老旧小区改造",
        "duty": "department",
        "departments": ["HOUSING"],
        "deadline_class": "complex",
    },
    {
        "code": "elderly_care",
        "name": "困难老人帮扶",
        "duty": "department",
        "departments": ["CIVIL", "REDCROSS"],
        "deadline_class": "complex",
    },
    {
        "code": "wage_arrears",
        "name": "欠薪纠纷",
        "duty": "department",
        "departments": ["UNION"],
        "deadline_class": "normal",
    },
    {
        "code": "health_service",
        "name": "社区卫生服务",
        "duty": "department",
        "departments": ["HEALTH"],
        "deadline_class": "normal",
    },
    {
        "code": "neighbour_dispute",
        "name": "邻里纠纷",
        "duty": "community",
        "departments": ["PSB"],
        "deadline_class": "normal",
    },
    {"code": "greening", "name": "小区绿化", "duty": "community", "departments": ["URBAN"], "deadline_class": "normal"},
]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玲建国志红"


@dataclass
class County:
    """The reference data of the demo county, as request bodies for /v1/org."""

    units: list[dict[str, Any]] = field(default_factory=list)
    departments: list[dict[str, str]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    cadres: list[dict[str, Any]] = field(default_factory=list)
    secondments: list[tuple[str, str]] = field(default_factory=list)
    communities: list[str] = field(default_factory=list)
    grids: dict[str, list[str]] = field(default_factory=dict)
    residents: int = 0


def build_county(seed: int = 2019, scale: int = 1) -> County:
    """Dangtu's figures (about 250,000 urban residents, 13 communities, 45 part-time cadres), times `scale`."""
    rng = random.Random(seed)
    county = County(units=[CITY, DISTRICT, *STREETS])
    for copy in range(scale):
        suffix = f"-{copy + 1}" if scale > 1 else ""
        for slug, name, street in COMMUNITIES:
            community = f"{slug}{suffix}"
            residents = rng.randrange(14_000, 24_000, 100)
            county.residents += residents
            county.units.append(
                {
                    "id": community,
                    "kind": "community",
                    "parent": street,
                    "name": f"{name}{suffix}",
                    "residents": residents,
                }
            )
            county.communities.append(community)
            grids = [f"{community}-g{g}" for g in range(1, rng.randint(5, 9))]
            county.grids[community] = grids
            county.units.extend(
                {"id": grid, "kind": "grid", "parent": community, "name": f"{name}{suffix}第{i + 1}网格"}
                for i, grid in enumerate(grids)
            )
    county.departments = [{"code": code, "name": name} for code, name in DEPARTMENTS]
    county.categories = CATEGORIES
    for i in range(45 * scale):
        department = DEPARTMENTS[i % len(DEPARTMENTS)][0]
        cadre = f"cadre-{i + 1:03d}"
        county.cadres.append(
            {
                "id": cadre,
                "name": rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
                "department": department,
                "title": "兼职干部",
            }
        )
        county.secondments.append((cadre, county.communities[i % len(county.communities)]))
    return county
