"""The report's languages: one message catalog per language, keyed on the English text.

gettext style: the msgid is the English source itself, so a notebook is translatable without
an edit. English needs no catalog (the msgid is the text); `data/i18n/<lang>.json` maps each
msgid to its translation, grouped by where the text comes from (a notebook, a module) so a
reviewer reads it next to its source. A msgid is compared with its whitespace collapsed, so
re-wrapping a paragraph in a notebook keeps its translation.

A msgid may hold `{name}` fields: `t("{n} of {total} checks pass", lang, n=30, total=30)`
formats the translation; the same entry also translates text already rendered with those
fields (a heading printed by a stage), each field matching any text that is kept as is.

Three kinds of text go through here: markdown (a notebook's cells, a stage's printed
markdown) block by block, HTML (table headers, captions, verdict words) and plain strings
from code (the first page, the summary). Numbers, code and identifiers are never translated:
a block without a catalog entry stays in English, and `missing()` lists such blocks so a
test can insist on full coverage.
"""

from __future__ import annotations

import html as htmllib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from helpers import paths
from helpers.errors import ConfigError

LANGS: dict[str, str] = {"en": "English", "zh": "中文 (简体)"}
DEFAULT = "en"
CATALOG_DIR: Path = paths.DATA / "i18n"

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"^\s*(```|~~~)")
# a block is worth translating when it has a word of letters outside code spans and tags
_CODE_SPAN = re.compile(r"`[^`]*`")
_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"[A-Za-z]{2,}")
# a table cell holding one of these Python reprs is shown as a dash / yes / no instead
REPRS = {"None": "-", "True": "yes", "False": "no", "<NA>": "-"}


def check(lang: str) -> str:
    """`lang` when it is a report language, else a ConfigError naming the valid ones."""
    if lang in LANGS:
        return lang
    valid = ", ".join(f"{k} ({v})" for k, v in LANGS.items())
    raise ConfigError(f"report language {lang!r} is not one of {valid}",
                      fix="set REPORT_LANG=en or REPORT_LANG=zh (REPORT_LANG, not LANG, "
                          "which is the locale)")


def msgid(text: str) -> str:
    """The catalog key of a text: its whitespace collapsed to single spaces."""
    return " ".join(str(text).split())


def catalog_path(lang: str) -> Path:
    return CATALOG_DIR / f"{lang}.json"


@lru_cache(maxsize=8)
def _load(lang: str, mtime_ns: int) -> tuple[dict[str, str], tuple[tuple[re.Pattern[str], str], ...]]:
    path = catalog_path(lang)
    with open(path, encoding="utf-8") as fh:
        groups = json.load(fh)
    if not isinstance(groups, dict):
        raise ConfigError(f"{path} must map a group name to {{English: translation}}")
    flat: dict[str, str] = {}
    for group, entries in groups.items():
        if group.startswith("_"):
            continue  # "_about": notes for translators
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: group {group!r} must be an object of "
                              "English -> translation")
        for key, value in entries.items():
            key_id = msgid(key)
            if key_id in flat and flat[key_id] != value:
                raise ConfigError(f"{path}: {key!r} is translated twice, differently "
                                  f"(group {group!r})", fix="keep one translation")
            flat[key_id] = value
    patterns = []
    for key, value in flat.items():
        if _FIELD.search(key):
            parts = _FIELD.split(key)  # literal, name, literal, name, ...
            rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)"
                         for i, p in enumerate(parts))
            patterns.append((re.compile(f"^{rx}$"), value))
    return flat, tuple(patterns)


def catalog(lang: str) -> dict[str, str]:
    """msgid -> translation for `lang` ({} for English, whose msgids are the text)."""
    return _entries(lang)[0]


def _entries(lang: str) -> tuple[dict[str, str], tuple[tuple[re.Pattern[str], str], ...]]:
    check(lang)
    if lang == DEFAULT:
        return {}, ()
    path = catalog_path(lang)
    if not path.is_file():
        raise ConfigError(f"no message catalog for {lang!r} at {path}",
                          fix="restore data/i18n/ from the repository")
    return _load(lang, path.stat().st_mtime_ns)


def lookup(text: str, lang: str) -> str | None:
    """The translation of a text (exact msgid, else a `{field}` entry that matches it);
    None when the catalog has none. English: the text itself."""
    if lang == DEFAULT:
        return text
    flat, patterns = _entries(lang)
    key = msgid(text)
    if key in flat:
        return flat[key]
    for rx, value in patterns:
        m = rx.match(key)
        if m:
            return value.format(**m.groupdict())
    return None


def t(text: str, lang: str = DEFAULT, **fields: Any) -> str:
    """Code-produced text in `lang`: the translation of the msgid `text` (English when the
    catalog lacks it), with `fields` formatted in."""
    if lang == DEFAULT:
        out = text
    else:
        flat, _ = _entries(lang)
        out = flat.get(msgid(text), text)
    return out.format(**fields) if fields else out


def verdict(word: str, lang: str = DEFAULT) -> str:
    """A verdict word (PASS / FAIL / info) or a stage status in `lang`."""
    return t(word, lang)


# ---- markdown ---------------------------------------------------------------------------


def blocks(md: str) -> list[str]:
    """A markdown text split into its blocks (paragraphs, headings, lists, tables, fenced
    code): blank lines separate blocks, except inside a fence; a heading is a block of its
    own even without a blank line after it."""
    out: list[str] = []
    cur: list[str] = []
    fenced = False
    for line in md.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            cur.append(line)
            continue
        if fenced:
            cur.append(line)
            continue
        if not line.strip():
            if cur:
                out.append("\n".join(cur))
                cur = []
            continue
        if line.lstrip().startswith("#"):
            if cur:
                out.append("\n".join(cur))
            out.append(line)
            cur = []
            continue
        cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def translatable(block: str) -> bool:
    """A block has words to translate: not fenced code, not only tags, code or numbers."""
    if _FENCE.match(block):
        return False
    bare = _TAG.sub(" ", _CODE_SPAN.sub(" ", block))
    bare = re.sub(r"^#+\s*", "", bare.strip())
    return bool(_WORD.search(bare))


def markdown(md: str, lang: str) -> str:
    """A markdown text in `lang`, block by block; a block without an entry stays as is."""
    if lang == DEFAULT:
        return md
    out = []
    for block in blocks(md):
        found = lookup(block, lang) if translatable(block) else None
        if found is None and _LIST_ITEM.match(block.split("\n", 1)[0]):
            found = _list(block, lang)  # a list a stage printed: item by item
        if found is None:
            out.append(block)
            continue
        heading = re.match(r"^\s*(#+\s+)", block)
        if heading and not found.lstrip().startswith("#"):
            found = heading.group(1) + found  # the catalog may hold a heading without its #
        out.append(found)
    return "\n\n".join(out)


_LIST_ITEM = re.compile(r"^(\s*[-*+]\s+)(.*)$")


def _list(block: str, lang: str) -> str | None:
    """A markdown list with each item (its continuation lines included) translated where the
    catalog has it; None when no item has an entry."""
    items: list[list[str]] = []
    for line in block.splitlines():
        m = _LIST_ITEM.match(line)
        if m or not items:
            items.append([m.group(1) if m else "", m.group(2) if m else line])
        else:
            items[-1][1] += "\n" + line
    done, hits = [], 0
    for marker, text in items:
        found = lookup(text, lang) if translatable(text) else None
        hits += found is not None
        done.append(marker + (found if found is not None else text))
    return "\n".join(done) if hits else None


def missing(md: str, lang: str) -> list[str]:
    """The blocks of a markdown text that have words to translate and no entry in `lang`."""
    if lang == DEFAULT:
        return []
    return [msgid(b) for b in blocks(md) if translatable(b) and lookup(b, lang) is None]


# ---- HTML -------------------------------------------------------------------------------

_TH = re.compile(r"(<th\b[^>]*>)(.*?)(</th>)", re.S)
_CAPTION = re.compile(r"(<(?:caption|summary)\b[^>]*>)(.*?)(</(?:caption|summary)>)", re.S)
_TD = re.compile(r"(<td\b([^>]*)>)(.*?)(</td>)", re.S)
_CELL_WORDS = ("PASS", "FAIL", "info", "yes", "no", "not measured", "passed", "failed",
               "error", "skipped")
_SUMMARY_ROWS = re.compile(r"^(.*?) \((\d+) rows; click to open\)$")


def _swap(m: re.Match[str], lang: str, words_only: bool = False) -> str:
    inner = m.group(2)
    if "<" in inner:  # markup inside: leave it
        return m.group(0)
    text = htmllib.unescape(inner).strip()
    if not text or (words_only and text not in _CELL_WORDS):
        return m.group(0)
    found = lookup(text, lang)
    if found is None:
        return m.group(0)
    return f"{m.group(1)}{htmllib.escape(found, quote=False)}{m.group(3)}"


def cell(text: str, lang: str) -> str:
    """A table cell's text as published: a Python repr (None, True, False) as a dash / yes /
    no, verdict and yes/no words in `lang`, anything else as it is."""
    text = REPRS.get(text.strip(), text)
    return t(text.strip(), lang) if text.strip() in _CELL_WORDS else text


def _cell(m: re.Match[str], lang: str) -> str:
    open_tag, _, inner, close = m.groups()
    text = htmllib.unescape(inner).strip()
    if "<" in inner or (text not in REPRS and text not in _CELL_WORDS):
        return m.group(0)
    return f"{open_tag}{htmllib.escape(cell(text, lang), quote=False)}{close}"


def html(fragment: str, lang: str) -> str:
    """An HTML output in `lang`: table headers, captions and fold summaries translated where
    the catalog has them, verdict and yes/no cells translated, and Python reprs in cells
    (None, True, False, nan) shown as a dash / yes / no (in every language)."""
    out = _TD.sub(lambda m: _cell(m, lang), fragment)
    if lang == DEFAULT:
        return out
    out = _TH.sub(lambda m: _swap(m, lang), out)
    out = _CAPTION.sub(lambda m: _summary(m, lang), out)
    return out


def _summary(m: re.Match[str], lang: str) -> str:
    text = htmllib.unescape(m.group(2)).strip()
    rows = _SUMMARY_ROWS.match(text)
    if rows:  # tables.collapsible: "<what> (N rows; click to open)"
        what = lookup(rows.group(1), lang) or rows.group(1)
        shown = t("{what} ({n} rows; click to open)", lang, what=what, n=rows.group(2))
        return f"{m.group(1)}{htmllib.escape(shown, quote=False)}{m.group(3)}"
    return _swap(m, lang)


def has_cjk(text: str) -> bool:
    return bool(re.search(r"[\u3400-\u9fff]", text))
