"""GPA's three tasks on one side, with the release's prompts (AutoArk/GPA
data_utils/audio_dataset_ark_audio.py, ark_infer_processor; scripts/inference/gpa_inference.py):

  stt    <|start_glm_token|> GLM ids <|end_glm_token|> <|start_semantic_token|> BiCodec semantic
         ids <|end_semantic_token|> <|start_content|>   -> text until <|im_end|>; the transcript
         is the generated text without <|im_end|> / <|end_content|> (run_stt)
  tts-a  <|start_global_token|> the reference clip's 32 BiCodec global ids <|end_global_token|>
         then the tokenized "<|start_content|>" + text + "<|end_content|>"  -> semantic ids,
         decoded by BiCodec with the reference's global ids, DC removed, 16 kHz (run_tts)
  vc     <|start_global_token|> reference global ids <|end_global_token|>
         <|start_semantic_token|> source semantic ids <|end_semantic_token|> <|end_content|>
         -> semantic ids, decoded with the reference's global ids (run_vc)
Audio ids sit at the layout's offsets (helpers.models.gpa.layout). The release builds the vc
prompt by decoding the ids to text and tokenizing it again; with its added tokens that round
trip gives the same ids, which are built here directly. Generated ids are read by range (the
release reads <|bicodec_semantic_N|> out of the decoded text: the same ids). The transcript
drops special tokens and audio ids when decoding (the release keeps any but the two markers).

Decoding (gpa_inference.py): stt greedy, 512 new tokens; tts-a and vc sample (temperature 0.2,
repetition penalty 1.2, 512 new tokens). The stage's default is greedy everywhere, keeping the
release's repetition penalty; DECODING=release samples with a fixed seed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from helpers import generate
from helpers.bench import Clock
from helpers.device import Backend
from helpers.generate import Sampling
from helpers.models import audio_components as ac
from helpers.models import gpa as recipe
from helpers.models.base import LoadedModel
from helpers.tasks.inputs import TaskClip
from helpers.tasks.results import TRAJECTORY_STEPS, TaskOutput, first_chunk_seconds

SOURCE = "AutoArk/GPA scripts/inference/gpa_inference.py"
RATE = 16_000  # BiCodec writes 16 kHz (gpa_inference.py: sf.write(..., 16000))
SEMANTIC_HZ = 50.0  # BiCodec semantic tokens per second (320 samples at 16 kHz)
STREAM_CHUNK = 50  # gpa_engine.py streams ceil(1.0 s * AUDIO_FRAME_RATE 50) tokens per chunk
ROUND_TRIP = "round trip of "  # the clip name of a transcription of the model's own output
RELEASE = {
    "stt": Sampling(source=f"{SOURCE} run_stt: greedy, max_new_tokens 512"),
    "tts-a": Sampling(True, temperature=0.2, repetition_penalty=1.2,
                      source=f"{SOURCE} run_tts: temperature 0.2, repetition penalty 1.2"),
    "vc": Sampling(True, temperature=0.2, repetition_penalty=1.2,
                   source=f"{SOURCE} run_vc: temperature 0.2, repetition penalty 1.2"),
}
TASKS = ("stt", "tts-a", "vc")
MAX_NEW_TOKENS = 512  # the release's for every task


class TaskClock(Clock):
    """A task's clock: the seconds since its start, plus those charged for work an earlier
    task did for it (a clip tokenized before, reused)."""

    def __init__(self, be: Backend | None = None) -> None:
        super().__init__(be)
        self.charged = 0.0

    def charge(self, seconds: float) -> None:
        self.charged += seconds

    def stamp(self) -> float:
        return super().stamp() + self.charged


class Pipeline:
    """The tasks on one loaded GPA (the LM, speech_tokenizer and codec on this side)."""

    def __init__(self, loaded: LoadedModel, be: Backend | None = None, max_new_tokens: int = 512,
                 decoding: str = "greedy", seed: int = 0, audio_ids_only: bool = False) -> None:
        generate.check_decoding(decoding)
        self.audio_ids_only = audio_ids_only
        missing = [n for n in ("speech_tokenizer", "codec") if n not in loaded.components]
        if missing:
            from helpers.errors import ModelLoadError

            raise ModelLoadError(f"gpa tasks need {', '.join(missing)}, which did not load",
                                 "give MODEL_DIR the release's glm-4-voice-tokenizer/ and "
                                 "BiCodec/ folders")
        self.loaded, self.be = loaded, be
        self.lm, self.tok = loaded.lm, loaded.tokenizer
        self.layout = recipe.layout(self.tok, self.lm.config.vocab_size)
        self.max_new = max_new_tokens
        self.decoding, self.seed = decoding, seed
        self.st, self.codec = loaded.components["speech_tokenizer"], loaded.components["codec"]
        # the reference's outputs by (task, clip) on the target side: each task is then also
        # teacher-forced on the reference's prompt and ids (None: this is the reference)
        self.leader: dict[tuple[str, str], TaskOutput] | None = None
        # BiCodec tokens of the clips tokenized so far, by the samples' sha256, with the
        # seconds each took: (semantic, global, seconds)
        self.tokenized: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    # ---- pieces ---------------------------------------------------------------------------
    def sampling(self, task: str) -> Sampling:
        s = RELEASE[task]
        sem = self.layout["semantic"]
        allow = ((sem["offset"], sem["offset"] + sem["size"]),) if (
            self.audio_ids_only and task != "stt") else ()
        s = Sampling(s.do_sample, s.temperature, s.top_k, s.top_p, s.repetition_penalty,
                     seed=self.seed, source=s.source, allow=allow)
        return s if self.decoding == "release" else s.greedy()

    def marker(self, name: str) -> list[int]:
        return self.tok.encode(name, add_special_tokens=False)

    def ids(self, kind: str, tokens: torch.Tensor) -> list[int]:
        return (tokens.reshape(-1).cpu().long() + self.layout[kind]["offset"]).tolist()

    def glm_tokens(self, x16: np.ndarray) -> torch.Tensor:
        dev, dt = next(self.st.parameters()).device, next(self.st.parameters()).dtype
        out = ac.run("speech_tokenizer", self.st, ac.inputs_for(
            "speech_tokenizer", x16, dev, dt, part_config=self.st.config))
        return out["tokens"][0, : int(out["lengths"][0])]

    @torch.inference_mode()
    def bicodec_tokens(self, x16: np.ndarray, clock: TaskClock) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic [1, N], global [1, 1, 32]) of a clip, as SparkTokenizer.tokenize gives.

        A clip this side tokenized before (stt, then tts-a's voice, vc's source and voice) is
        not tokenized again: its tokens are reused and the task's clock is charged the
        seconds they took, so every task's timings still include its tokenization."""
        x16 = np.ascontiguousarray(x16, dtype=np.float32)
        key = hashlib.sha256(x16.tobytes()).hexdigest()
        if key not in self.tokenized:
            p = next(self.codec.parameters())
            took = Clock(self.be)
            took.start()
            kw = ac.inputs_for("codec", x16, p.device, p.dtype, part_config=self.codec.config)
            semantic, glob = self.codec.tokenize(kw["input_values"], kw["ref_wav"])
            self.tokenized[key] = (semantic.long(), glob.long(), took.stamp())
            return self.tokenized[key][:2]
        semantic, glob, seconds = self.tokenized[key]
        clock.charge(seconds)
        return semantic, glob

    @torch.inference_mode()
    def waveform(self, semantic: list[int], glob: torch.Tensor) -> np.ndarray:
        """BiCodec detokenize of semantic ids (0-based) with global ids; DC removed (run_tts)."""
        dev = next(self.codec.parameters()).device
        sem = torch.tensor([semantic], dtype=torch.long, device=dev)
        wave = self.codec.detokenize(sem, glob.to(dev))
        x = wave.detach().to("cpu", torch.float32).reshape(-1).numpy().astype(np.float64)
        return (x - x.mean()).astype(np.float32) if x.size else x.astype(np.float32)

    def semantic_of(self, tokens: list[int]) -> list[int]:
        off, size = self.layout["semantic"]["offset"], self.layout["semantic"]["size"]
        return [t - off for t in tokens if off <= t < off + size]

    def chunk_end(self, tokens: list[int], count: int) -> int:
        """How many generated ids it takes to hold `count` semantic ids (1-based position)."""
        off, size = self.layout["semantic"]["offset"], self.layout["semantic"]["size"]
        seen = 0
        for i, t in enumerate(tokens, 1):
            seen += off <= t < off + size
            if seen >= count:
                return i
        return len(tokens)

    def text_of(self, tokens: list[int]) -> str:
        audio_start = self.layout["glm"]["offset"]
        audio_end = self.layout["semantic"]["offset"] + self.layout["semantic"]["size"]
        text = [t for t in tokens if not audio_start <= t < audio_end and t < len(self.tok)]
        return self.tok.decode(text, skip_special_tokens=True).strip()

    def generate(self, prompt: list[int], task: str, keep: bool = True) -> generate.Decoded:
        eos = {self.layout["markers"][recipe.TOKEN_LAYOUT["eos"]]}
        ids = torch.tensor([prompt], dtype=torch.long)  # [1, S]
        return generate.decode(self.lm, {"input_ids": ids}, self.max_new, self.sampling(task),
                               eos, Clock(self.be), keep_logits=keep and self.leader is None)

    def steps(self, out: TaskOutput, decoded: generate.Decoded) -> TaskOutput:
        """`out` with its step logits: its own (no leader), or this side's teacher-forced on
        the leader's prompt and ids for the same task and clip."""
        lead = (self.leader or {}).get(out.key)
        if out.clip.startswith(ROUND_TRIP):
            return out  # the model transcribing its own output: not a task compared here
        if self.leader is None:
            out.steps = decoded.logits[0, :TRAJECTORY_STEPS].clone()  # not a view of all N
        elif lead is not None and lead.tokens:
            n = min(len(lead.tokens), TRAJECTORY_STEPS)
            ids = torch.tensor([lead.prompt], dtype=torch.long)  # [1, S]
            try:  # a failure here is the comparison's, not the task's: the output stays
                out.steps = generate.decode(self.lm, {"input_ids": ids}, n,
                                            forced=torch.tensor([lead.tokens[:n]])).logits[0]
            except Exception as exc:
                out.extra["teacher_forced_error"] = f"{type(exc).__name__}: {exc}"
        return out

    # ---- tasks ----------------------------------------------------------------------------
    def stt(self, clip: TaskClip) -> TaskOutput:
        clock = TaskClock(self.be)
        clock.start()
        x = clip.samples16
        glm = self.glm_tokens(x)
        semantic, _ = self.bicodec_tokens(x, clock)
        L = recipe.TOKEN_LAYOUT
        prompt = (self.marker(L["glm"]["start"]) + self.ids("glm", glm) + self.marker(L["glm"]["end"])
                  + self.marker(L["semantic"]["start"]) + self.ids("semantic", semantic)
                  + self.marker(L["semantic"]["end"]) + self.marker(L["content"]["start"]))
        t_prompt = clock.stamp()
        out = self.generate(prompt, "stt", keep=not clip.name.startswith(ROUND_TRIP))
        total = clock.stamp()
        return self.steps(TaskOutput(
            "stt", clip.name, prompt=prompt, tokens=out.tokens, text=self.text_of(out.tokens),
            stopped=out.stopped, first_token_s=t_prompt + out.prefill_s, seconds=total,
            audio_in_s=clip.seconds, audio_out_s=0.0,
            sampling=self.sampling("stt").describe()), out)

    def _speak(self, task: str, clip: TaskClip, prompt: list[int], glob: torch.Tensor,
               clock: TaskClock, **fields: Any) -> TaskOutput:
        t_prompt = clock.stamp()
        out = self.generate(prompt, task)
        t_ids = clock.stamp()
        semantic = self.semantic_of(out.tokens)
        wave = self.waveform(semantic, glob) if semantic else np.zeros(0, np.float32)
        total = clock.stamp()
        first_audio = math.nan
        if semantic:  # the streaming server's first chunk: 1 s of tokens, then its decoding
            n = self.chunk_end(out.tokens, min(STREAM_CHUNK, len(semantic)))
            first_audio = t_prompt + out.time_at(n) + first_chunk_seconds(
                len(semantic), STREAM_CHUNK, total - t_ids,
                lambda: self.waveform(semantic[:STREAM_CHUNK], glob), self.be)
        return self.steps(TaskOutput(
            task, clip.name, prompt=prompt, tokens=out.tokens, text=self.text_of(out.tokens),
            stopped=out.stopped, wave=wave, rate=RATE, semantic=semantic,
            first_token_s=t_prompt + out.prefill_s, first_audio_s=first_audio, seconds=total,
            audio_in_s=clip.seconds, audio_out_s=wave.shape[0] / RATE,
            sampling=self.sampling(task).describe(), **fields), out)

    def tts(self, text: str, voice: TaskClip, name: str) -> TaskOutput:
        clock = TaskClock(self.be)
        clock.start()
        _, glob = self.bicodec_tokens(voice.samples16, clock)
        L = recipe.TOKEN_LAYOUT
        content = self.tok(L["content"]["start"] + text + L["content"]["end"],
                           add_special_tokens=False)["input_ids"]
        prompt = (self.marker(L["global"]["start"]) + self.ids("global", glob)
                  + self.marker(L["global"]["end"]) + content)
        return self._speak("tts-a", TaskClip(name, voice.path, voice.origin, text),
                           prompt, glob, clock, voice=voice.name)

    def vc(self, source: TaskClip, voice: TaskClip) -> TaskOutput:
        clock = TaskClock(self.be)
        clock.start()
        semantic, _ = self.bicodec_tokens(source.samples16, clock)
        _, glob = self.bicodec_tokens(voice.samples16, clock)
        L = recipe.TOKEN_LAYOUT
        prompt = (self.marker(L["global"]["start"]) + self.ids("global", glob)
                  + self.marker(L["global"]["end"]) + self.marker(L["semantic"]["start"])
                  + self.ids("semantic", semantic) + self.marker(L["semantic"]["end"])
                  + self.marker(L["content"]["end"]))
        return self._speak("vc", source, prompt, glob, clock, voice=voice.name)

    def transcribe(self, wave: np.ndarray, name: str) -> str:
        """The model's own stt of a waveform it wrote (the round trip of tts-a and vc)."""
        if wave.shape[0] < int(0.1 * RATE):
            return ""
        clip = TaskClip(ROUND_TRIP + name, None, "output", samples16=wave)  # type: ignore[arg-type]
        return self.stt(clip).text
