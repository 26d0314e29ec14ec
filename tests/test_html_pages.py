"""The builders every HTML report shares: escaping, numbers, tables, the page shell."""

import math

from llm_lora.html_pages import STYLE, bar, escape, number, page, table


def test_values_are_escaped_and_missing_numbers_are_a_dash():
    assert escape("<b>'x'</b>") == "&lt;b&gt;&#x27;x&#x27;&lt;/b&gt;"
    assert number(0.1) == "0.100" and number(-0.1, signed=True) == "-0.100" and number(0.8, signed=True) == "+0.800"
    assert number(None) == "–" and number(math.nan) == "–" and number(2.345, 1) == "2.3"
    assert bar(-5) == "<span class='bar' style='width:0px'></span>"


def test_table_escapes_cells_and_keeps_rendered_rows():
    html = table([["<a>", 1], "<tr><td class='better'>+1</td></tr>"], ["name", "n"], element_id="t", css="figures")
    assert html.startswith('<table id="t" class="figures"><thead><tr><th>name</th><th>n</th></tr></thead>')
    assert "<td>&lt;a&gt;</td><td>1</td>" in html and "<td class='better'>+1</td>" in html
    assert "<thead>" not in table([["a"]])


def test_a_page_is_self_contained():
    html = page("A <title>", "<h2>Hi</h2>")
    assert "<title>A &lt;title&gt;</title>" in html and f"<style>{STYLE}</style>" in html
    assert not [asset for asset in ("<script", "<link", "src=", "url(") if asset in html]
