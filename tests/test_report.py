"""The report document: every block renders in HTML and Markdown; the page displays in headless Chromium."""

from __future__ import annotations

import pytest

from esgrpo.report.document import Document
from esgrpo.report.render import find_chromium, screenshot


def _doc(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "f.png")
    plt.close(fig)
    doc = Document("Title <&>")
    doc.heading("Section one")
    doc.para("Some **bold** and `code` text.")
    doc.table(["task", "value"], [["math", "1.0"], ["boolq", "<2>"], ["norm", "||d||"]])
    doc.figure(tmp_path / "f.png", "A caption.")
    doc.figure(tmp_path / "missing.png", "Skipped: no file.")
    doc.heading("Section two")
    return doc


def test_document_renders_every_block_in_html_and_markdown(tmp_path):
    doc = _doc(tmp_path)
    html_path, md_path = doc.write(tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    assert doc.section_titles() == ["Section one", "Section two"]
    assert "<title>Title &lt;&amp;&gt;</title>" in html  # escaped
    assert "<b>bold</b>" in html and "<code>code</code>" in html
    assert "<td>&lt;2&gt;</td>" in html and html.count("<tr>") == 4 and "<td>||d||</td>" in html
    assert html.count("data:image/png;base64,") == 1 and "<figcaption>A caption.</figcaption>" in html
    assert "Skipped" not in html
    assert "## Section one" in md and "| boolq | <2> |" in md and "![A caption.](f.png)" in md
    assert "| norm | \\|\\|d\\|\\| |" in md  # pipes inside a Markdown cell are escaped


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (Debian package `chromium`)")
def test_report_page_displays_in_headless_chromium(tmp_path):
    from PIL import Image

    html_path, _ = _doc(tmp_path).write(tmp_path)
    png = screenshot(html_path, tmp_path / "shot.png", width=800, height=600)
    img = Image.open(png).convert("L")
    assert img.size == (800, 600)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text and figure drawn, not a blank page


def test_format_table_splits_each_gain_into_format_alone_and_the_rest():
    from esgrpo.report.study import format_table

    results = {"base_right_format": {"math": 0.5}, "base_accuracy_right_format": {"math": 0.4},
               "base": {"math": 0.2},
               "tasks": {"math": {"right_format": {"grpo": 0.9}, "accuracy_right_format": {"grpo": 0.5},
                                  "accuracy": {"grpo": 0.45}}}}
    header, rows = format_table(results)
    assert header[-1] == "GRPO"
    # accuracy 0.2 = 0.5 x 0.4 -> 0.45 = 0.9 x 0.5: format alone (0.9 - 0.5) x 0.4 = 16 of the 25 points
    assert rows == [["math", "50.0 / 40.0", "- / -", "- / -", "90.0 / 50.0 (format +16.0 of +25.0)"]]


def test_precision_table_summarizes_each_runs_audit(tmp_path):
    import json

    from esgrpo.report.study import precision_table

    es = tmp_path / "es"
    es.mkdir()
    rows = [{"iteration": 1, "changed_frac": 0.5, "update_cosine": 0.9, "update_norm_ratio": 1.0},
            {"iteration": 2, "changed_frac": 0.25, "update_cosine": 0.7, "update_norm_ratio": 1.5}]
    (es / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"tasks": {"math": {"runs": {"es": str(es), "grpo": str(tmp_path / "missing")}}}}
    header, table = precision_table(results)
    assert header[2] == "updates"
    assert table == [["math", "ES", "2", "37.5", "0.7000", "0.8000", "1.2500"]]
    assert precision_table({"tasks": {"math": {"runs": {}}}}) is None  # runs without an audit: no table


def test_theory_norm_table_with_a_grpo_run_that_did_not_move():
    """A GRPO run whose every group tied (zero advantages) leaves the weights where they were: the norm
    table says so instead of dividing by zero."""
    from esgrpo.config import GRPOConfig
    from esgrpo.report.theory import _norm_rows

    a = {"es_short_iterations": 1,
         "weights": {"math": {"norms": {"es_long": {"total": {"abs": 1.5}}, "grpo": {"total": {"abs": 0.0}}}}}}
    walks = {"math": {"alpha": 0.01, "population": 4, "iterations": 2, "d": 100}}
    (row,) = _norm_rows(a, walks, GRPOConfig(steps=1))
    assert row[0] == "math" and row[-1].endswith("/ - (GRPO did not move)")
