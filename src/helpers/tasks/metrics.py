"""Task metrics: word error rate (English) and character error rate (Chinese) with jiwer,
after one stated text normalization, and the accuracy-drop rule.

Normalization (NORMALIZATION, applied to reference and hypothesis alike): Unicode NFKC
(full-width letters and digits to ASCII), case folding, every Unicode punctuation or symbol
character (categories P*, S*) replaced by a space, whitespace collapsed. English is then split
into words (WER); Chinese has its spaces removed and every character is a token (CER), so a
transcript "今天 天气很好。" and a reference "今天天气很好" are equal.

Rates are edit operations / reference tokens (jiwer: substitutions + deletions + insertions
over the reference length), in float64; they can exceed 1 when the hypothesis is much longer.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

NORMALIZATION = ("Unicode NFKC, case folding, punctuation and symbols (Unicode P*, S*) to "
                 "spaces, whitespace collapsed; zh: spaces removed, one token per character")

# ModelZoo convention for ported models: the device may lose at most 1 point of accuracy
# against the reference; for an error rate, target rate - reference rate <= 1 percentage point.
MAX_DROP_POINTS = 1.0
DROP_SOURCE = ("Ascend ModelZoo adaptation convention: accuracy on the device within 1 point "
               "of the reference run's")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def language_of(text: str) -> str:
    """'zh' when the text holds a CJK ideograph, else 'en'."""
    return "zh" if _CJK.search(text or "") else "en"


def normalize(text: str, language: str) -> str:
    """The text as it is scored (see NORMALIZATION)."""
    t = unicodedata.normalize("NFKC", text or "").casefold()
    t = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in t)
    t = " ".join(t.split())
    return t.replace(" ", "") if language == "zh" else t


def tokens(text: str, language: str) -> list[str]:
    """The scored units: words (en) or characters (zh)."""
    t = normalize(text, language)
    return list(t) if language == "zh" else t.split()


def error_rate(reference: str, hypothesis: str, language: str) -> dict[str, Any]:
    """WER (en) or CER (zh) of one transcript: {metric, rate, reference_tokens, edits, ...}.

    An empty normalized reference cannot be scored: rate None with the reason.
    """
    import jiwer

    metric = "CER" if language == "zh" else "WER"
    ref, hyp = tokens(reference, language), tokens(hypothesis, language)
    if not ref:
        return {"metric": metric, "rate": None, "reference_tokens": 0,
                "why": "the reference text is empty after normalization"}
    # jiwer scores words: join the units with spaces so a character is a "word" for zh
    out = jiwer.process_words(" ".join(ref), " ".join(hyp) if hyp else "")
    edits = out.substitutions + out.deletions + out.insertions
    return {"metric": metric, "rate": float(edits) / float(len(ref)), "reference_tokens": len(ref),
            "hypothesis_tokens": len(hyp), "substitutions": out.substitutions,
            "deletions": out.deletions, "insertions": out.insertions}


def corpus_rate(pairs: list[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Pooled rate per metric over (reference, hypothesis, language) triples: total edits over
    total reference units (the usual corpus WER/CER, not a mean of per-clip rates)."""
    out: dict[str, dict[str, Any]] = {}
    for ref, hyp, lang in pairs:
        r = error_rate(ref, hyp, lang)
        if r["rate"] is None:
            continue
        acc = out.setdefault(r["metric"], {"edits": 0, "reference_tokens": 0, "clips": 0})
        acc["edits"] += r["substitutions"] + r["deletions"] + r["insertions"]
        acc["reference_tokens"] += r["reference_tokens"]
        acc["clips"] += 1
    for acc in out.values():
        acc["rate"] = float(acc["edits"]) / float(acc["reference_tokens"])
    return out


def drop_points(target_rate: float, reference_rate: float) -> float:
    """How many percentage points the target loses: 100 * (target - reference) error rate."""
    return 100.0 * (float(target_rate) - float(reference_rate))
