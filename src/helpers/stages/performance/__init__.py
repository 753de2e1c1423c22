"""Stage 5: what a user will feel, measured with the one timing protocol (helpers.bench).

Sections, each a function returning a helpers.stages.kit.Section for the notebook:
  sanity     a 0.2 s sleep and a known allocation, measured by the stage's own timer / reader
  latency    the project's decode loop (helpers.generate): time to first token (prefill) and
             the decode steps timed apart, end-to-end latency for N new tokens (128 as in the
             GPA report), decode throughput and time per output token; the same loop over a
             static KV cache; HF generate as a labelled comparison; peak memory of every
             device of the placement
  bandwidth  weight bytes read per decoded token x tokens/s against the device's memory
             bandwidth measured here (a large copy), and a roofline with a measured matmul roof
  rtf        real-time factor of every audio component (processing time / audio duration)
  modes      HF generate eager vs static KV cache with graph capture (torch.compile), the
             capture verified (graphs, breaks, cudagraph skips, device graph replays) before
             its speed-up is judged; declined for a model spread over several devices
  sweeps     batch 1, 2, 4, 8 (throughput, latency) and prompt length (prefill time)

Generation is always greedy with exactly N new tokens: min_new_tokens = max_new_tokens = N, so
the end-of-sequence token cannot stop a run early (its logit is masked until N tokens exist).
A measurement that fails is a row saying what failed, never a crashed stage.

Modules: settings (the knobs), generation (the run, greedy decoding of exactly N tokens),
sections, graph (eager vs graph mode, the compile cap), inductor_cache (the compile cache and
its cleanup), figures.
"""

from helpers.stages.performance import graph, inductor_cache, sections
from helpers.stages.performance.figures import bandwidth_figure, roofline_figure, sweeps_figure
from helpers.stages.performance.generation import (
    DecodeTiming,
    Run,
    hf_generate_fn,
    lm_inputs,
    measure_decode,
    measure_hf_generate,
    setup,
)
from helpers.stages.performance.graph import StepCap, graph_cap, graph_config, modes, time_cap
from helpers.stages.performance.inductor_cache import elf_complete
from helpers.stages.performance.sections import (
    allocation_probe,
    audio_seconds,
    bandwidth,
    batch_sweep,
    copy_bandwidth,
    decode_weight_bytes,
    headline,
    host_load,
    latency,
    matmul_flops,
    memory_table,
    prompt_sweep,
    roofline,
    rtf,
    sanity,
    sleep_probe,
    throughput_table,
)
from helpers.stages.performance.settings import Settings

__all__ = [
    "Run", "Settings", "StepCap", "allocation_probe", "audio_seconds", "bandwidth", "bandwidth_figure",
    "DecodeTiming", "batch_sweep", "copy_bandwidth", "decode_weight_bytes", "elf_complete",
    "graph", "graph_cap", "graph_config", "headline", "host_load",
    "hf_generate_fn", "inductor_cache", "latency", "lm_inputs", "matmul_flops", "measure_decode",
    "measure_hf_generate",
    "memory_table", "modes", "prompt_sweep", "roofline", "roofline_figure", "rtf",
    "sanity", "sections", "setup", "sleep_probe", "sweeps_figure", "throughput_table", "time_cap",
]
