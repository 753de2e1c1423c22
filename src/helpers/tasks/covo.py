"""Covo-Audio-Chat's tasks on one side, as the release's example.py runs them (GitHub
Tencent/Covo-Audio): a dialogue of two rounds, each a user turn of speech.

  prompt   get_dialog_prompt (helpers.models.covo_frontend.chat_inputs): round 1 with the
           system prompt, round 2 "\\n<|im_start|>user ..." continuing round 1's KV cache
  a2t      text reply; generation stops at <|endoftext|>
  a2ta     text and audio tokens interleaved, stops at <|im_end|>; ids >= len(tokenizer) are
           audio tokens (id - len(tokenizer), 0..16383) for token2wav (24 kHz); the text is the
           ids below len(tokenizer) decoded with skip_special_tokens (process_output)
  decoding repetition penalty 1.05 and the windowed penalty 1.05 over 8 ids in both rounds;
           round 1 greedy; round 2 samples (temperature 0.5, top-p 0.9, top-k 50). The stage's
           default is greedy in both rounds, keeping the penalties; DECODING=release samples
           round 2 with a fixed seed. 2048 new tokens at most (example.py).
Round 2 continues the cache round 1 left: every token but round 1's last (generate does not
feed its final id back), as example.py hands result.past_key_values on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from helpers import generate
from helpers.bench import Clock
from helpers.device import Backend
from helpers.generate import Sampling
from helpers.models import covo_frontend as frontend
from helpers.models import covo_model as cm
from helpers.models.base import LoadedModel
from helpers.tasks.inputs import TaskClip
from helpers.tasks.results import TRAJECTORY_STEPS, TaskOutput, first_chunk_seconds

SOURCE = "Tencent/Covo-Audio example.py"
TASKS = ("a2t", "a2ta")
EOS = {"a2t": "<|endoftext|>", "a2ta": "<|im_end|>"}
MAX_NEW_TOKENS = 2048
PENALTIES = dict(repetition_penalty=1.05, window_penalty=1.05, window=8)
ROUND = (Sampling(source=f"{SOURCE}: round 0 greedy", **PENALTIES),
         Sampling(True, temperature=0.5, top_k=50, top_p=0.9,
                  source=f"{SOURCE}: round 1 temperature 0.5, top-p 0.9, top-k 50", **PENALTIES))
STREAM_CHUNK = 25  # 1 s of audio tokens at token2wav's 25 Hz


class Pipeline:
    """The dialogue tasks on one loaded Covo-Audio-Chat (the chat module and token2wav)."""

    def __init__(self, loaded: LoadedModel, be: Backend | None = None, max_new_tokens: int = 2048,
                 decoding: str = "greedy", seed: int = 0, audio_ids_only: bool = False) -> None:
        generate.check_decoding(decoding)
        self.audio_ids_only = audio_ids_only
        self.loaded, self.be = loaded, be
        self.model, self.tok = loaded.model, loaded.tokenizer
        frontend.check_tokenizer(self.tok)
        self.vocoder = loaded.components.get("vocoder")
        self.max_new, self.decoding, self.seed = max_new_tokens, decoding, seed
        self.text_vocab = len(self.tok)
        self.leader: dict[tuple[str, str], TaskOutput] | None = None  # see tasks.gpa.Pipeline

    def sampling(self, round_: int, task: str = "a2t") -> Sampling:
        s = ROUND[round_]
        allow = ((self.text_vocab, self.text_vocab + cm.AUDIO_CODES),) if (
            self.audio_ids_only and task == "a2ta") else ()
        s = Sampling(s.do_sample, s.temperature, s.top_k, s.top_p, s.repetition_penalty,
                     s.window_penalty, s.window, seed=self.seed, source=s.source, allow=allow)
        return s if self.decoding == "release" else s.greedy()

    def split(self, tokens: list[int]) -> tuple[list[int], list[int]]:
        t = torch.tensor(tokens, dtype=torch.long)
        text, audio = cm.split_tokens(t, self.text_vocab)
        return text.tolist(), audio.tolist()

    @torch.inference_mode()
    def vocode(self, audio_tokens: list[int]) -> np.ndarray:
        dev = next(self.vocoder.parameters()).device
        wave = self.vocoder(torch.tensor([audio_tokens], dtype=torch.long, device=dev))
        return wave.detach().to("cpu", torch.float32).reshape(-1).numpy()

    def chunk_end(self, tokens: list[int], count: int) -> int:
        seen = 0
        for i, t in enumerate(tokens, 1):
            seen += t >= self.text_vocab
            if seen >= count:
                return i
        return len(tokens)

    @torch.inference_mode()
    def dialogue(self, task: str, first: TaskClip, second: TaskClip | None) -> list[TaskOutput]:
        """Both rounds of one task; a round that fails is an output with its error."""
        eos = {self.tok.convert_tokens_to_ids(EOS[task])}
        enc = self.loaded.components["audio_encoder"]
        cache, outs = None, []
        forced_cache: Any = None  # the teacher-forced rounds' own cache (target side)
        for i, clip in enumerate([c for c in (first, second) if c is not None]):
            clock = Clock(self.be)
            clock.start()
            inputs = frontend.chat_inputs(self.tok, *frontend.read(clip.path),
                                          self.loaded.input_device("lm"),
                                          next(enc.parameters()).dtype, first_round=i == 0)
            embeds = self.model.embed(inputs["input_ids"], inputs["input_features"])
            t_prompt = clock.stamp()
            past = 0 if cache is None else cache.get_seq_length()
            out = generate.decode(self.model.llm, {"inputs_embeds": embeds}, self.max_new,
                                  self.sampling(i, task), eos, Clock(self.be),
                                  prompt_ids=inputs["input_ids"][0], cache=cache, past=past,
                                  keep_logits=self.leader is None)
            cache = out.cache
            text_ids, audio_ids = self.split(out.tokens)
            wave, first_audio = None, math.nan
            t_ids = clock.stamp()
            if task == "a2ta" and audio_ids and self.vocoder is not None:
                wave = self.vocode(audio_ids)
            total = clock.stamp()
            if wave is not None:  # the first 1 s of audio tokens, then its vocoding
                first_audio = (t_prompt + out.time_at(self.chunk_end(out.tokens, min(
                    STREAM_CHUNK, len(audio_ids)))) + first_chunk_seconds(
                    len(audio_ids), STREAM_CHUNK, total - t_ids,
                    lambda ids=audio_ids: self.vocode(ids[:STREAM_CHUNK]), self.be))
            rate = self.vocoder.config.sample_rate if self.vocoder is not None else 0
            outs.append(TaskOutput(
                task, f"{clip.name} (round {i + 1})",
                prompt=inputs["input_ids"][0].tolist(), tokens=out.tokens,
                text=self.tok.decode(text_ids, skip_special_tokens=True).strip(),
                stopped=out.stopped, wave=wave, rate=rate, semantic=audio_ids,
                first_token_s=t_prompt + out.prefill_s, first_audio_s=first_audio,
                seconds=total, audio_in_s=clip.seconds,
                audio_out_s=0.0 if wave is None else wave.shape[0] / rate,
                sampling=self.sampling(i, task).describe(), extra={"round": i + 1, "heard": clip.name}))
            if self.leader is None:
                outs[-1].steps = out.logits[0, :TRAJECTORY_STEPS].clone()  # not a view of all N
            else:
                try:  # a failure here is the comparison's, not the task's: the output stays
                    outs[-1].steps, forced_cache = self.forced(outs[-1].key, embeds,
                                                               forced_cache, i)
                except Exception as exc:
                    outs[-1].extra["teacher_forced_error"] = f"{type(exc).__name__}: {exc}"
                    forced_cache = None
        return outs

    def forced(self, key: tuple[str, str], embeds: torch.Tensor, cache: Any, round_: int,
               ) -> tuple[torch.Tensor | None, Any]:
        """This side's step logits fed the leader's ids of the same round (on this side's own
        audio embeddings, continuing the forced rounds' cache), and that cache: None when the
        leader's round was longer than TRAJECTORY_STEPS (a later round then has no context)."""
        lead = self.leader.get(key) if self.leader else None
        if lead is None or not lead.tokens or (round_ > 0 and cache is None):
            return None, None
        n = min(len(lead.tokens), TRAJECTORY_STEPS)
        past = 0 if cache is None else cache.get_seq_length()
        out = generate.decode(self.model.llm, {"inputs_embeds": embeds}, n,
                              forced=torch.tensor([lead.tokens[:n]]), cache=cache, past=past)
        return out.logits[0], out.cache if n == len(lead.tokens) else None
