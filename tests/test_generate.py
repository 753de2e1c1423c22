"""The one decode loop: the same ids as HF generate (greedy, exactly N, with the repetition
penalty), a static cache equal to a dynamic one, teacher forcing that returns each step's
logits, the penalties by hand, the same draw on every side, and the clock's timestamps."""

from __future__ import annotations

import math
import time

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from helpers import compat, generate
from helpers import device as devices
from helpers.bench import Clock
from helpers.errors import ConfigError
from helpers.generate import Sampling

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10]])  # [1, 6]


@pytest.fixture(scope="module")
def lm() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      max_position_embeddings=256, eos_token_id=None, pad_token_id=0)
    return Qwen3ForCausalLM(cfg).eval()


def _hf(lm: Qwen3ForCausalLM, n: int, **kw) -> torch.Tensor:
    out = lm.generate(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT), do_sample=False,
                      max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **kw)
    return out[:, PROMPT.shape[1]:]  # [1, n]


def test_greedy_ids_equal_hf_generate_on_dynamic_and_static_caches(lm) -> None:
    want = _hf(lm, 16)
    got = generate.decode(lm, {"input_ids": PROMPT}, 16)
    assert torch.equal(got.ids, want) and got.stopped == "max_new_tokens"
    static = generate.static_cache(lm, PROMPT.shape[1] + 16)
    for _ in range(2):  # a static cache handed in is rewound: the same ids run after run
        again = generate.decode(lm, {"input_ids": PROMPT}, 16, cache=static)
        assert torch.equal(again.ids, want)


def test_a_left_padded_batch_gives_each_row_what_it_gives_alone(lm) -> None:
    """Rows of other lengths, left-padded into one batch with their mask: the same greedy ids
    and (float32 rounding aside) the same step logits as each row decoded on its own, in free
    and in forced decoding; a padded batch cannot continue an earlier round."""
    rows = [torch.tensor([5, 6, 7, 8, 9, 10]), torch.tensor([11, 3, 4]), torch.tensor([42])]
    ids = torch.zeros(3, 6, dtype=torch.long)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 6 - len(r):], mask[i, 6 - len(r):] = r, 1
    batch = generate.decode(lm, {"input_ids": ids, "attention_mask": mask}, 10, keep_logits=True)
    forced = generate.decode(lm, {"input_ids": ids, "attention_mask": mask}, 10,
                             forced=batch.ids)
    for i, r in enumerate(rows):
        alone = generate.decode(lm, {"input_ids": r[None]}, 10, keep_logits=True)
        assert torch.equal(batch.ids[i], alone.ids[0]), i
        for got in (batch.logits[i], forced.logits[i]):
            assert torch.allclose(got, alone.logits[0], rtol=1e-4, atol=1e-5), i
    with pytest.raises(ConfigError, match="continues no earlier round"):
        generate.decode(lm, {"input_ids": ids, "attention_mask": mask}, 2, cache=batch.cache,
                        past=8)


def test_repetition_penalty_equals_transformers_processor(lm) -> None:
    want = _hf(lm, 12, repetition_penalty=1.3)
    got = generate.decode(lm, {"input_ids": PROMPT}, 12, Sampling(repetition_penalty=1.3))
    assert torch.equal(got.ids, want)


def test_blocked_end_tokens_make_exactly_n_ids_and_eos_stops_otherwise(lm) -> None:
    free = generate.decode(lm, {"input_ids": PROMPT}, 8)
    eos = {free.tokens[2]}  # the third greedy id is now an end token
    stopped = generate.decode(lm, {"input_ids": PROMPT}, 8, eos=eos)
    assert stopped.tokens == free.tokens[:3] and stopped.stopped == f"eos {free.tokens[2]}"
    exact = generate.decode(lm, {"input_ids": PROMPT}, 8, generate.exactly(eos), eos=eos)
    assert len(exact.tokens) == 8 and exact.tokens[2] != free.tokens[2]
    lm.generation_config.eos_token_id = free.tokens[2]
    try:  # HF generate's min_new_tokens masks the same id: the same ids
        assert exact.tokens == _hf(lm, 8)[0].tolist()
    finally:
        lm.generation_config.eos_token_id = None


def test_teacher_forcing_returns_each_steps_logits(lm) -> None:
    free = generate.decode(lm, {"input_ids": PROMPT}, 10, keep_logits=True)
    assert free.logits.shape == (1, 10, 97)
    forced = generate.decode(lm, {"input_ids": PROMPT}, 10, forced=free.ids)
    assert forced.stopped == "forced" and torch.equal(forced.ids, free.ids)
    assert torch.equal(forced.logits, free.logits)  # the same steps, the same numbers
    assert torch.equal(forced.logits.argmax(-1), free.ids)
    # feeding other ids changes every later step's logits, not the first one's
    other = free.ids.clone()
    other[0, 3] = (other[0, 3] + 1) % 97
    shifted = generate.decode(lm, {"input_ids": PROMPT}, 10, forced=other)
    assert torch.equal(shifted.logits[:, :4], free.logits[:, :4])
    assert not torch.equal(shifted.logits[:, 4:], free.logits[:, 4:])
    with pytest.raises(ConfigError, match=r"give \[batch, max_new_tokens\]"):
        generate.decode(lm, {"input_ids": PROMPT}, 10, forced=free.ids[:, :5])


def test_a_round_continues_the_cache_the_last_one_left(lm) -> None:
    whole = generate.decode(lm, {"input_ids": PROMPT}, 12)
    first = generate.decode(lm, {"input_ids": PROMPT}, 6)
    # the cache holds every token but the last: the next round starts by feeding it
    rest = generate.decode(lm, {"input_ids": first.ids[:, -1:]}, 6, cache=first.cache,
                           past=PROMPT.shape[1] + 5)
    assert first.tokens + rest.tokens == whole.tokens


def test_batches_decode_identical_rows_alike(lm) -> None:
    one = generate.decode(lm, {"input_ids": PROMPT}, 6)
    two = generate.decode(lm, {"input_ids": PROMPT.repeat(2, 1)}, 6)
    assert two.ids.shape == (2, 6) and torch.equal(two.ids[1], one.ids[0])
    with pytest.raises(ConfigError, match="one row at a time"):
        generate.decode(lm, {"input_ids": PROMPT.repeat(2, 1)}, 6, Sampling(repetition_penalty=2.0))


def test_timestamps_split_prefill_from_decode(lm) -> None:
    d = generate.decode(lm, {"input_ids": PROMPT}, 8, clock=Clock(devices.backend(
        devices.select("cpu"))))
    assert len(d.times) == 8 and all(b >= a for a, b in zip(d.times, d.times[1:], strict=False))
    assert d.prefill_s > 0 and d.decode_s == pytest.approx(d.times[-1] - d.times[0])
    assert d.time_at(3) == d.times[2] and d.time_at(99) == d.times[-1]


def test_clock_measures_a_sleep() -> None:
    clock = Clock(devices.backend(devices.select("cpu")))
    clock.start()
    time.sleep(0.05)
    assert 0.045 <= clock.stamp() < 0.5


# ---- the rules, by hand ---------------------------------------------------------------------


def test_repetition_penalties_follow_the_release_rules() -> None:
    scores = torch.tensor([2.0, -2.0, 1.0, 0.5], dtype=torch.float64)
    seen = torch.tensor([0, 1, 3, 3])
    out = generate.process(scores, seen, Sampling(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 1.0, 0.25]  # positive / p, negative * p, unseen kept
    out = generate.process(scores, seen, Sampling(window_penalty=2.0, window=1))
    assert out.tolist() == [2.0, -2.0, 1.0, 0.25]  # only the last id is in the window
    # Covo-Audio's rule (example.py): penalty 2 over the last 2 ids sees ids 3, 4 only
    five = torch.tensor([1.0, 2.0, -2.0, 4.0, 5.0], dtype=torch.float64)
    out = generate.windowed_penalty(five.clone(), torch.tensor([1, 2, 3, 4]), 2.0, 2)
    assert out.tolist() == [1.0, 2.0, -2.0, 2.0, 2.5]
    allow = generate.process(scores, seen, Sampling(allow=((2, 3),)), eos={0})
    assert math.isinf(allow[1]) and math.isinf(allow[3]) and allow[2] == 1.0 and allow[0] == 2.0


def test_sampling_is_the_same_draw_on_every_side() -> None:
    s = Sampling(True, temperature=0.5, top_k=3, top_p=0.9, seed=7)
    scores = torch.tensor([1.0, 0.9, 0.2, -1.0, 3.0], dtype=torch.float64)
    a = [generate.choose(generate.process(scores, torch.tensor([]), s),
                         s, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [generate.choose(generate.process(scores.to(torch.float32).to(torch.float64),
                                          torch.tensor([]), s), s,
                         torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a == b and all(x in (0, 1, 4) for x in a)  # top-k 3 keeps ids 4, 0, 1
    greedy = s.greedy()
    assert generate.choose(scores, greedy, torch.Generator()) == 4 and "greedy" in greedy.describe()


def test_pad_and_end_token_rules(lm) -> None:
    class Tok:
        pad_token_id, eos_token_id = None, 3

    assert generate.pad_id(Tok()) == 3
    Tok.eos_token_id = None
    assert generate.pad_id(Tok()) == 0
    lm.generation_config.eos_token_id = [4, 5]
    try:
        assert generate.eos_ids(lm, type("T", (), {"eos_token_id": 6})()) == {4, 5, 6}
    finally:
        lm.generation_config.eos_token_id = None
    assert compat.cache_keyword(lm.forward) in ("cache", "past_key_values")
    with pytest.raises(ConfigError, match="give at least 1"):
        generate.decode(lm, {"input_ids": PROMPT}, 0)
