"""Rebuild the shipped tiny tokenizer in data/tokenizer/ from its text corpus.

The tiny model profiles need a tokenizer that ships with the project (no model hub at run
time). This trains a byte-level BPE with the `tokenizers` library on data/tokenizer/corpus.txt
plus the prompts of data/prompts.json, adds the recipes' special tokens, and saves it as
tokenizer.json + tokenizer_config.json (+ chat_template.jinja), loadable offline with
AutoTokenizer / PreTrainedTokenizerFast.

    .venv/bin/python scripts/build_tokenizer.py          # rewrite data/tokenizer/
    .venv/bin/python scripts/build_tokenizer.py --check  # exit 1 if the shipped files differ

Training is deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "tokenizer"
CORPUS = OUT / "corpus.txt"
PROMPTS = ROOT / "data" / "prompts.json"

VOCAB_SIZE = 1536  # upper bound; the corpus yields fewer merges than this at min_frequency 2
MIN_FREQUENCY = 2
# <|endoftext|> ends documents and pads; <|im_start|>/<|im_end|> frame chat turns (ChatML, as
# Qwen2/Qwen3 use); <|audio|> is the placeholder that audio embeddings replace
# (covo-audio-chat); <|audio_start|>/<|audio_end|> bracket a run of placeholders.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|audio|>", "<|audio_start|>", "<|audio_end|>",
]
# ChatML, the turn format of the Qwen family.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def corpus_lines() -> list[str]:
    """The training text: the shipped corpus, then every prompt of data/prompts.json."""
    lines = [ln for ln in CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    prompts = json.loads(PROMPTS.read_text(encoding="utf-8"))
    for texts in prompts.values():
        lines.extend(texts)
    return lines


def train(lines: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=MIN_FREQUENCY,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def portable_config(out: Path) -> None:
    """Name the class and the extra special tokens so transformers 4.x loads it too.

    transformers 5 writes tokenizer_class "TokenizersBackend" and "extra_special_tokens";
    4.57 (the version of the Ascend reports) knows "PreTrainedTokenizerFast" and
    "additional_special_tokens". 5.x reads both spellings.
    """
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = list(SPECIAL_TOKENS[1:])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out: Path) -> PreTrainedTokenizerFast:
    fast = wrap(train(corpus_lines()))
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    portable_config(out)
    return fast


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp folder and compare with data/tokenizer/")
    args = ap.parse_args(argv)
    if not args.check:
        fast = build(OUT)
        print(f"wrote {OUT} ({len(fast)} tokens)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        differ = [f for f in FILES if not filecmp.cmp(Path(tmp) / f, OUT / f, shallow=False)]
    if differ:
        print(f"data/tokenizer differs from a fresh build in: {', '.join(differ)}; "
              "run scripts/build_tokenizer.py", file=sys.stderr)
        return 1
    print("data/tokenizer matches a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
