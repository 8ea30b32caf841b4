"""A report as a list of blocks, rendered twice: a self-contained HTML page and a Markdown twin.

Blocks are headings, paragraphs, tables and figures; paragraphs may use **bold** and `code`.
The HTML embeds the figures as base64 PNGs so the page is one file that can be mailed or archived;
the Markdown links the PNG files next to it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from esgrpo.runs import write_text

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.3em;margin-top:1.8em;
border-bottom:1px solid #eee}h3{font-size:1.1em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.88em;color:#555}
code{background:#f5f5f5;padding:0 3px}nav a{margin-right:1em}
"""


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure"
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table: header first
    path: Path | None = None  # figure file


class Document:
    """Collects blocks; `write(dir, stem)` produces stem.html and stem.md."""

    def __init__(self, title: str) -> None:
        self.blocks: list[Block] = [Block("h1", title)]

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block(f"h{level}", text))

    def para(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(Block("table", rows=[header, *rows]))

    def figure(self, path: Path, caption: str) -> None:
        """A PNG with its caption (what is plotted, from which runs); skipped if the file is missing."""
        if Path(path).exists():
            self.blocks.append(Block("figure", caption, path=Path(path)))

    def section_titles(self) -> list[str]:
        return [b.text for b in self.blocks if b.kind == "h2"]

    # -- rendering ------------------------------------------------------------------------------

    def markdown(self, root: Path) -> str:
        out = []
        for b in self.blocks:
            if b.kind.startswith("h"):
                out.append("#" * int(b.kind[1]) + " " + b.text)
            elif b.kind == "p":
                out.append(b.text)
            elif b.kind == "table":
                header, *rows = b.rows
                cell = lambda c: c.replace("|", "\\|")  # noqa: E731  (a bare | would split the cell)
                out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]))
            elif b.kind == "figure" and b.path is not None:
                rel = b.path.relative_to(root) if b.path.is_relative_to(root) else b.path
                out.append(f"![{b.text}]({rel})\n\n*{b.text}*")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        body = []
        anchors = []
        for i, b in enumerate(self.blocks):
            if b.kind.startswith("h"):
                anchor = f"s{i}"
                if b.kind == "h2":
                    anchors.append((anchor, b.text))
                body.append(f'<{b.kind} id="{anchor}">{_inline(b.text)}</{b.kind}>')
            elif b.kind == "p":
                body.append(f"<p>{_inline(b.text)}</p>")
            elif b.kind == "table":
                header, *rows = b.rows
                body.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header)
                            + "</tr></thead><tbody>"
                            + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</tbody></table>")
            elif b.kind == "figure" and b.path is not None:
                data = base64.b64encode(b.path.read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(b.text)}</figcaption></figure>")
        nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in anchors) + "</nav>"
        title = html.escape(self.blocks[0].text)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{CSS}</style></head><body>\n{body[0]}\n{nav}\n" + "\n".join(body[1:]) + "\n</body></html>\n")

    def write(self, root: Path, stem: str = "report") -> tuple[Path, Path]:
        root = Path(root)
        write_text(root / f"{stem}.md", self.markdown(root))
        write_text(root / f"{stem}.html", self.html())
        return root / f"{stem}.html", root / f"{stem}.md"


def _inline(text: str) -> str:
    """Escape HTML, then render **bold** and `code`."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)
