"""The report's languages: every notebook block and every code string has a Chinese entry,
the catalog keeps numbers and fields, and a language that does not exist is refused before
anything runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from helpers import cli, i18n, paths
from helpers.config import ConfigError, RunConfig
from helpers.records import STATUSES, VERDICTS
from helpers.stages import summary

SRC = Path(i18n.__file__).parent


def _notebooks() -> list[Path]:
    return sorted(paths.NOTEBOOKS.glob("*.ipynb"))


def test_every_markdown_block_of_every_notebook_has_a_zh_entry() -> None:
    # when you change a notebook's text, add its translation to data/i18n/zh.json
    missing = {}
    for path in _notebooks():
        nb = nbformat.read(path, as_version=4)
        gaps = [b for c in nb.cells if c.cell_type == "markdown"
                for b in i18n.missing(c.source, "zh")]
        if gaps:
            missing[path.name] = gaps
    assert missing == {}


def _literal_msgids() -> dict[str, str]:
    """Every literal first argument of an i18n.t(...) / t(...) call in the package."""
    found = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            arg = node.args[0]
            if name == "t" and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found[arg.value] = path.name
    return found


def test_every_string_code_translates_has_a_zh_entry() -> None:
    used = _literal_msgids()
    assert len(used) > 30  # the scan finds the summary's and the publisher's strings
    cat = i18n.catalog("zh")
    assert {m: f for m, f in used.items() if i18n.msgid(m) not in cat} == {}


def test_first_page_labels_and_verdict_words_have_zh_entries() -> None:
    empty = summary.Run(Path("."), {"run_id": "x", "config": {}, "stages": []}, {})
    frame = summary.key_figures(empty)
    words = [*frame["area"], *frame["figure"], *summary.GROUP_COLUMNS, *summary.FIGURE_COLUMNS,
             *VERDICTS.WORDS, *STATUSES, *summary.STAGE_VERDICTS.values(), summary.NOT_MEASURED]
    assert [w for w in words if i18n.lookup(w, "zh") is None] == []
    assert set(frame["verdict"]) == {summary.NOT_MEASURED}  # nothing measured, nothing made up


def test_translations_keep_their_fields_numbers_and_code() -> None:
    for key, value in i18n.catalog("zh").items():
        assert sorted(re.findall(r"\{(\w+)\}", key)) == sorted(re.findall(r"\{(\w+)\}", value)), key
        assert sorted(re.findall(r"`[^`]*`", key)) == sorted(re.findall(r"`[^`]*`", value)), key
        heading = re.match(r"#+ ", key)
        assert not heading or value.startswith(heading.group(0)), key


def test_markdown_is_translated_block_by_block_whatever_its_wrapping() -> None:
    wrapped = ("# 5. Performance\n\nBefore trusting any figure, the stage measures two things\n"
               "whose answer is known: a 0.2 s sleep through the same timer every measurement uses "
               "(within 5%), and a 64 MiB allocation through the same memory reader (device "
               "allocator on an accelerator, process RSS on the CPU; within 10%).\n\n"
               "A sentence nobody translated.\n\n```python\nx = 1\n```")
    out = i18n.markdown(wrapped, "zh")
    assert out.startswith("# 5. 性能\n\n") and "0.2 秒" in out and "64 MiB" in out
    assert "A sentence nobody translated." in out and "```python\nx = 1\n```" in out
    assert i18n.markdown(wrapped, "en") == wrapped
    assert i18n.missing(wrapped, "zh") == ["A sentence nobody translated."]


def test_a_field_entry_translates_rendered_text_and_t_formats_it() -> None:
    assert i18n.lookup("first 16 of 29 tokens (12.5 Hz)", "zh") == "29 个 token 中的前 16 个（12.5 Hz）"
    assert i18n.t("Page {page} of {pages}", "zh", page=3, pages=9) == "第 3 页，共 9 页"
    assert i18n.t("Page {page} of {pages}", "en", page=3, pages=9) == "Page 3 of 9"
    assert i18n.t("a string without an entry", "zh") == "a string without an entry"


def test_html_headers_verdicts_and_python_reprs() -> None:
    fragment = ('<table><thead><tr><th class="col_heading">check</th><th>snr_db</th></tr></thead>'
                '<tbody><tr><td class="data verdict-pass">PASS</td><td>None</td><td>True</td>'
                "<td>nan</td><td>0.99998</td></tr></tbody></table>")
    en = i18n.html(fragment, "en")
    assert ">PASS<" in en and ">-<" in en and ">yes<" in en and ">None<" not in en
    assert ">nan<" in en  # a NaN is a value, kept visible
    zh = i18n.html(fragment, "zh")
    assert ">检查<" in zh and ">snr_db<" in zh and ">通过<" in zh and ">是<" in zh
    assert ">0.99998<" in zh


def test_an_unknown_language_is_refused_with_its_fix() -> None:
    with pytest.raises(ConfigError, match="report language 'fr'") as err:
        RunConfig.from_strings({"REPORT_LANG": "fr"})
    assert "REPORT_LANG=zh" in err.value.fix and "LANG" in err.value.fix
    assert RunConfig.from_strings({"report_lang": "zh"}).report_lang == "zh"
    assert RunConfig().report_lang == "en"
    assert "report_lang" not in RunConfig.stage_fields()  # publish reads it, not the stages


def test_cli_exits_2_for_an_unknown_language_before_a_run_folder_exists(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main([f"OUT={out}", "REPORT_LANG=de"]) == 2
    assert "report language 'de'" in capsys.readouterr().err
    assert not out.exists()


def test_figure_text_follows_the_report_language(tmp_path) -> None:
    """A stage with REPORT_LANG=zh saves (and shows) its figures with the catalog's text;
    texts without an entry and numbers stay as drawn; English leaves the figure alone."""
    from helpers import plots
    from helpers.config import RunConfig
    from helpers.stages.kit import Stage

    def drawn():
        fig, ax = plots.figure()
        ax.plot([0, 1], [0, 1], label="layer 3 + norm")
        ax.set(xlabel="time (s)", ylabel="relative L2 (%)",
               title="Hidden-state error by layer: npu:0 bfloat16 vs cpu float32")
        ax.legend()
        fig.text(0.5, 0.5, "aten::mm")
        return fig, ax

    fig, ax = drawn()
    plots.translate(fig, "en")
    assert ax.get_xlabel() == "time (s)"
    try:
        st = Stage("demo", str(tmp_path), "Demo", RunConfig.from_params(report_lang="zh"))
        assert plots.LANGUAGE == "zh"
        fig, ax = drawn()
        st.save_figure(fig, "demo")
    finally:
        plots.set_language("en")
    assert ax.get_xlabel() == "时间（秒）" and ax.get_ylabel() == "相对 L2（%）"
    assert ax.get_title() == "逐层隐藏状态误差：npu:0 bfloat16 对比 cpu float32"
    assert ax.get_legend().get_texts()[0].get_text() == "第 3 层 + 归一化"
    assert fig.texts[0].get_text() == "aten::mm"  # an identifier stays
    assert (tmp_path / "figures" / "demo-demo.png").stat().st_size > 1000


def test_every_stage_notebook_hands_the_report_language_to_its_figures() -> None:
    import papermill

    from helpers import paths

    for nb in sorted(paths.NOTEBOOKS.glob("0*.ipynb")):
        assert "report_lang" in papermill.inspect_notebook(str(nb)), nb.name
        # RunConfig.from_notebook takes report_lang from the parameters cell with the others
        assert "RunConfig.from_notebook(globals())" in nb.read_text(encoding="utf-8"), nb.name


def test_a_list_a_stage_prints_is_translated_item_by_item() -> None:
    from helpers import i18n

    md = ("- decoding: greedy, at most 24 new ids\n- an item without an entry\n  and its second "
          "line\n\n## Inputs")
    out = i18n.markdown(md, "zh")
    assert out.startswith("- 解码：greedy，最多 24 个新 id\n- an item without an entry\n  and its")
    assert i18n.markdown("- nothing here is known\n- nor here", "zh") == (
        "- nothing here is known\n- nor here")
