"""The assessment report a district circulates: `baton report --year Y [--month M] --out FILE.html|FILE.pdf`.

One self-contained HTML file (no script, charts as inline SVG, so a PDF printer and an e-mail client show the same):
each unit type's ranking with totals and grades, a chart per indicator, each unit's strengths and gaps (its best
and worst indicators), the month's 接诉即办 rankings when asked, and the signed root the scores were computed from
(the finalisation's, or the latest signed checkpoint's for provisional scores). A PDF is the HTML printed by
headless Chromium.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import escape

UNIT_TYPES = ("department", "community", "street")
TYPE_NAMES = {"department": "部门 Departments", "community": "社区 Communities", "street": "街道 Streets"}
STRONG, WEAK = Decimal(80), Decimal(60)
"""An indicator at or above STRONG points is a strength; one below WEAK (a pass) is a gap."""
CLASS_NAMES = {"advanced": "先进", "good": "较好", "average": "一般", "lagging": "后进"}


@dataclass(frozen=True)
class Basis:
    """What a unit type's scores were computed from."""

    final: bool
    cutoff_position: int
    tree_size: int | None
    root: str | None
    """Base64 of the Merkle root the scores are tied to."""


def bars(rows: list[tuple[str, Decimal | None]], width: int = 560) -> str:
    """A horizontal bar chart (0..100) as inline SVG; a unit with no value shows a dash."""
    height = 22 * len(rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    label_w, bar_w = 180, width - 240
    for i, (name, value) in enumerate(rows):
        y = 5 + 22 * i
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(name)}</text>')
        if value is None:
            parts.append(f'<text x="{label_w}" y="{y + 14}" font-size="12">–</text>')
            continue
        w = max(0.0, min(float(value), 100.0)) / 100 * bar_w
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="16" fill="#c0392b"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="12">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", sans-serif; margin: 2em; color: #222; }
h1 { color: #a93226; } table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }
.basis { font-family: monospace; font-size: 12px; background: #f6f6f6; padding: 0.6em; }
section { page-break-inside: avoid; } .provisional { color: #b9770e; }
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ organisation }} · generated {{ generated }} · scheme {{ scheme }}</p>
{% for part in parts %}
<section class="unit-type" data-unit-type="{{ part.unit_type }}">
<h2>{{ part.heading }} {% if not part.basis.final %}<span class="provisional">(provisional 暂定)</span>{% endif %}</h2>
<p class="basis">computed from events up to position {{ part.basis.cutoff_position }}{% if part.basis.root %};
tree size {{ part.basis.tree_size }}, signed root {{ part.basis.root }}{% endif %}{% if part.basis.final %}
(finalised){% endif %}</p>
<table class="ranking"><tr><th>rank 排名</th><th>unit 单位</th><th>total 总分</th><th>grade 等次</th>
<th>strengths 优势</th><th>gaps 短板</th></tr>
{% for u in part.units %}<tr data-unit="{{ u.unit }}"><td>{{ u.rank or "–" }}</td><td>{{ u.name }}</td>
<td>{{ u.total or "–" }}</td><td>{{ u.grade or "–" }}</td><td>{{ u.strengths }}</td><td>{{ u.gaps }}</td></tr>
{% endfor %}</table>
{% for chart in part.charts %}<h3>{{ chart.name }} <small>({{ chart.code }}, weight {{ chart.weight }})</small></h3>
{{ chart.svg | safe }}
{% endfor %}
</section>
{% endfor %}
{% if month %}
<h2>{{ month }} 接诉即办排名 (10 % response + 45 % resolution + 45 % satisfaction)</h2>
{% for r in rankings %}<section class="month-ranking" data-unit-type="{{ r.unit_type }}">
<h3>{{ r.heading }}</h3>
<table><tr><th>rank</th><th>unit</th><th>cases</th><th>response</th><th>resolution</th><th>satisfaction</th>
<th>composite</th><th>change</th><th>class</th></tr>
{% for u in r.units %}<tr data-unit="{{ u.unit }}"><td>{{ u.rank or "–" }}</td><td>{{ u.name }}</td>
<td>{{ u.cases }}</td>
<td>{{ u.response }}</td><td>{{ u.resolution }}</td><td>{{ u.satisfaction }}</td><td>{{ u.composite or "–" }}</td>
<td>{{ u.change or "–" }}</td><td>{{ u.klass }}</td></tr>{% endfor %}</table></section>
{% endfor %}{% endif %}
</body></html>
"""
)


def _pct(rate: str | None) -> str:
    return "–" if rate is None else f"{Decimal(rate) * 100:.1f}%"


def _part(unit_type: str, scores: dict[str, Any], basis: Basis) -> dict[str, Any]:
    units = []
    for u in scores["units"]:
        scored = [(i["name"], Decimal(i["score"])) for i in u["indicators"] if i["score"] is not None]
        ordered = sorted(scored, key=lambda x: x[1], reverse=True)
        units.append(
            {
                "unit": u["unit"],
                "name": u["name"],
                "rank": u["rank"],
                "total": u["total"],
                "grade": u["grade"],
                "strengths": "、".join(f"{n} {v}" for n, v in ordered[:2] if v >= STRONG),
                "gaps": "、".join(f"{n} {v}" for n, v in ordered[::-1][:2] if v < WEAK),
            }
        )
    units.sort(key=lambda u: (u["rank"] is None, u["rank"] or 0, u["unit"]))
    charts = []
    for index, indicator in enumerate(scores["units"][0]["indicators"] if scores["units"] else []):
        rows = [
            (u["name"], Decimal(u["indicators"][index]["score"]) if u["indicators"][index]["score"] else None)
            for u in scores["units"]
        ]
        charts.append(
            {"name": indicator["name"], "code": indicator["code"], "weight": indicator["weight"], "svg": bars(rows)}
        )
    return {"unit_type": unit_type, "heading": TYPE_NAMES[unit_type], "basis": basis, "units": units, "charts": charts}


def render(
    *,
    organisation: str,
    year: int,
    generated: str,
    scores: dict[str, tuple[dict[str, Any], Basis]],
    month: str | None = None,
    rankings: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The report as one HTML document (scores: unit type -> (the scores, what they were computed from))."""
    parts = [_part(t, *scores[t]) for t in UNIT_TYPES if t in scores]
    schemes = sorted({s["scheme_version"] for s, _ in scores.values()})
    months = []
    for unit_type, ranking in (rankings or {}).items():
        months.append(
            {
                "unit_type": unit_type,
                "heading": TYPE_NAMES[unit_type],
                "units": [
                    {
                        "unit": u["unit"],
                        "name": u["name"],
                        "rank": u["rank"],
                        "cases": u["cases"],
                        "response": _pct(u["response_rate"]),
                        "resolution": _pct(u["resolution_rate"]),
                        "satisfaction": _pct(u["satisfaction_rate"]),
                        "composite": u["composite"],
                        "change": u["change"],
                        "klass": f"{CLASS_NAMES.get(u['class'] or '', '–')} {u['class'] or ''}".strip(),
                    }
                    for u in ranking["units"]
                ],
            }
        )
    return TEMPLATE.render(
        title=f"{organisation} {year} 年度考核报告 Assessment report",
        organisation=organisation,
        generated=generated,
        scheme=", ".join(schemes),
        parts=parts,
        month=month,
        rankings=months,
    )


def b64(root: bytes) -> str:
    return base64.b64encode(root).decode()


def to_pdf(html: str, out: Path, chromium: str | None = None) -> None:
    """Print the HTML to a PDF with headless Chromium (Debian's `chromium`)."""
    browser = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FileNotFoundError("a PDF needs Chromium: apt-get install chromium (or write --out FILE.html)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp}/profile",
                "--no-pdf-header-footer",
                f"--print-to-pdf={out.resolve()}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
