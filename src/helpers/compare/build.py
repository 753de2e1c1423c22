"""One comparison: the runs opened and held to one model with the same weights and inputs,
every table computed once, shown by the compare notebook and written to comparison.json for
the markdown export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from helpers import i18n
from helpers.compare import device_parity, identity, sections
from helpers.compare.runs import RunFolder, open_runs
from helpers.compare.sections import Table
from helpers.records import VERDICTS, write_json
from helpers.tables import table

COMPARISON_FILE = "comparison.json"
# the order of the report's sections (a key absent from a comparison is not shown)
ORDER = ("runs", "differences", "checks", "metrics", "performance", "rating", "parity")


@dataclass
class Comparison:
    runs: list[RunFolder]
    lang: str = i18n.DEFAULT
    tables: dict[str, Table] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # caveats the reader sees first

    @property
    def model(self) -> str:
        cfg = self.runs[0].config if self.runs else {}
        return f"{cfg.get('model', '-')} ({cfg.get('profile', '-')})"

    def title(self) -> str:
        if not self.runs:
            return i18n.t("Comparison of runs", self.lang)
        return i18n.t("Comparison of runs: {model}, {runs}", self.lang, model=self.model,
                      runs=" vs ".join(r.side for r in self.runs))

    def summary(self) -> str:
        """One markdown line: how many runs of which model, and how many verdicts changed."""
        if not self.runs:
            return i18n.t("No runs given: set `runs` to two or more run folders (for example "
                          "`[\"report/<run-a>\", \"report/<run-b>\"]`), or run `make compare "
                          "A=report/<run-a> B=report/<run-b>`.", self.lang)
        checks = self.tables["checks"].frame
        changed = int(checks["change"].str.contains("->", regex=False).sum())
        return i18n.t("**{n} runs of {model}** compared; **{changed} of {total} checks changed "
                      "verdict**.", self.lang, n=len(self.runs), model=self.model,
                      changed=changed, total=len(checks))

    def headline(self) -> str:
        """Markdown: the summary line and the caveats of this comparison."""
        notes = [f'<div class="report-note">{i18n.markdown(note, self.lang)}</div>'
                 for note in self.notes]
        return "\n\n".join([self.summary(), *notes])

    def show(self, key: str) -> None:
        """Display one section: its notes, then its table (verdict words coloured)."""
        from IPython.display import Markdown, display

        tab = self.tables.get(key)
        if tab is None:
            return
        for note in tab.notes:
            display(Markdown(note))
        if not tab.frame.empty:
            display(styled(tab))

    def save(self, folder: Path) -> Path:
        """comparison.json: the title, headline, notes and every table, as shown."""
        return write_json(folder / COMPARISON_FILE, {
            "title": self.title(), "summary": self.summary(), "notes": self.notes,
            "lang": self.lang,
            "runs": [{"label": r.label, "run_id": r.run_id, "dir": str(r.dir)} for r in self.runs],
            "tables": [self.tables[k].as_dict() for k in ORDER if k in self.tables]})


def styled(tab: Table) -> Any:
    """A section's table through the report's formatter, each verdict cell coloured."""
    frame = tab.frame
    out = table(frame)
    if not tab.verdict_columns:
        return out
    css = {word: VERDICTS.css(word) for word in VERDICTS.WORDS}
    css.update({w: VERDICTS.css(VERDICTS.PASS) for w in ("PERFECT", "OK")})
    css.update({w: VERDICTS.css(VERDICTS.FAIL) for w in ("POK", "NOK")})
    classes = pd.DataFrame([[css.get(_word(v), "") if col in tab.verdict_columns else ""
                             for col, v in row.items()] for _, row in frame.iterrows()],
                           index=frame.index, columns=frame.columns)
    return out.set_td_classes(classes)


def _word(cell: Any) -> str:
    """The verdict a cell ends on: 'FAIL' for 'PASS -> FAIL' (a change is coloured by where
    it went), the cell itself otherwise."""
    return str(cell).split(" -> ")[-1]


def load(folders: list[str] | str) -> tuple[list[RunFolder], list[str]]:
    """The runs, checked (finished, one model, the same weights and inputs), and the notes that
    say what was compared on what; a ConfigError naming the folder or the hash otherwise."""
    if isinstance(folders, str):
        folders = folders.split()
    runs = open_runs(list(folders))
    return runs, identity.check(runs)


def build(folders: list[str] | str, report_lang: str = i18n.DEFAULT,
          out_dir: str = "") -> Comparison:
    """Every table of the comparison of `folders` (two or more run folders, in order); with
    `out_dir`, comparison.json is written there. No folders: an empty comparison that says
    what to give."""
    lang = i18n.check(report_lang)
    if not folders:
        return Comparison([], lang)
    runs, notes = load(folders)
    cmp = Comparison(runs, lang, notes=notes)
    cmp.tables["runs"] = sections.runs_table(runs)
    cmp.tables["differences"] = sections.differences(runs, identity.hash_rows(runs))
    cmp.tables["checks"] = sections.checks_side_by_side(runs)
    cmp.tables["metrics"] = (sections.headline_metrics(runs) if len(runs) == 2
                             else sections.trend(runs))
    cmp.tables["performance"] = sections.performance(runs)
    cmp.tables["rating"] = sections.ratings(runs)
    cmp.tables["parity"] = device_parity.parity(runs)
    if out_dir:
        cmp.save(Path(out_dir))
    return cmp
