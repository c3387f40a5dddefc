"""A self-contained HTML report: headings, paragraphs, tables and matplotlib figures.

Figures are embedded as base64 PNGs and the style sheet is inline, so the single file opens in
any browser with no network and no other files.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1250px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.8em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.88em} .tw{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right} th{background:#f3f3f6}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555} .note{color:#555;font-size:.92em}
"""


class HtmlReport:
    """Collects blocks, then ``save(path)`` writes one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[str] = []

    def heading(self, text: str) -> None:
        self.blocks.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, columns: list[str], rows: list[list], caption: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>"
                       for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>'
                           f"{body}</tbody></table></div>")

    def figure(self, fig, caption: str = "") -> None:
        """Embed a matplotlib figure (closed afterwards)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self._img(base64.b64encode(buf.getvalue()).decode("ascii"), caption)

    def image(self, path: str | os.PathLike, caption: str = "") -> None:
        """Embed a PNG file already on disk (nothing is embedded if it is missing)."""
        path = Path(path)
        if not path.exists():
            self.paragraph(f"(figure {path.name} was not produced)", note=True)
            return
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self._img(data, caption)

    def _img(self, data: str, caption: str) -> None:
        self.blocks.append(f'<figure><img alt="{html.escape(caption)}" '
                           f'src="data:image/png;base64,{data}"><figcaption>'
                           f"{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.blocks) + "</body></html>")

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, path)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.4g}"
    return str(v)
