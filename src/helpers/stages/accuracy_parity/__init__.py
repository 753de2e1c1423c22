"""Stage 4, accuracy parity: does the target (DEVICE, DTYPE) compute the same model as the CPU?

Who is compared with whom:
  reference  the CPU in float32 (knob reference_dtype): the numbers the target is held to
  target     DEVICE in DTYPE, resolved once by helpers.stages.kit.target; on a machine without
             an accelerator that is the CPU in bfloat16, so the stage still measures a real
             difference (precision instead of hardware)
  golden     the CPU in float64 (knob golden), when it fits in memory: it tells the target's
             error apart from float32's own (msprobe's "benchmark" standard)
Each side is loaded, run on the same inputs and freed in turn (reference, target, golden), so
one model is in memory at a time; outputs are kept on the host (float32; float64 for golden).

Sections, each a table plus its checks: logits over the shipped prompts, hidden states layer by
layer, greedy generation (helpers.generate, the one decode loop), determinism (the target
twice), the audio front end (log-mel on the device vs the CPU per fixture) and every audio
component of the recipe x every fixture, with players and figures. All metrics come from
helpers.parity (float64, inside their ranges); thresholds from data/thresholds.json.
A part that crashes on one side is a failed check naming the error, never a crashed stage.

A BASELINE run (one made elsewhere, e.g. on the GPU) adds a section: this target against its
saved target, by the same metrics and rules (baseline).

Modules: settings (the knobs), plan (who is compared with whom), sides (running one side, the
fixtures, saving each), sections (the text path's tables and checks), audio (front end and
components x fixtures, their tables, players and figures), baseline, figures.
"""

from helpers.stages.accuracy_parity.audio import (
    components_notes,
    components_section,
    components_table,
    fixtures_table,
    frontend_section,
    input_player,
    parity_table,
    pick,
    shown,
)
from helpers.stages.accuracy_parity.baseline import baseline_section
from helpers.stages.accuracy_parity.figures import layer_figure
from helpers.stages.accuracy_parity.modules import modules_section
from helpers.stages.accuracy_parity.plan import (
    COMPONENT_DTYPES,
    LOGIT_LABELS,
    Plan,
    Prompt,
    load_prompts,
    plan,
)
from helpers.stages.accuracy_parity.sections import (
    determinism_section,
    display_frame,
    generation_section,
    golden_section,
    headline,
    largest_increase,
    layer_frame,
    layers_section,
    logits_section,
    pooled_topk,
    weights_section,
)
from helpers.stages.accuracy_parity.settings import Settings
from helpers.stages.accuracy_parity.sides import (
    Runs,
    SideRun,
    collect,
    collect_loaded,
    golden_decision,
    greedy,
    run_all,
    stage_store,
    weight_digests,
)

__all__ = [
    "Settings", "baseline_section",
    "COMPONENT_DTYPES", "LOGIT_LABELS", "Plan", "Prompt", "Runs", "SideRun", "collect",
    "collect_loaded", "components_notes", "components_section", "components_table", "determinism_section",
    "display_frame", "fixtures_table", "frontend_section", "generation_section",
    "golden_decision", "golden_section", "greedy", "headline", "input_player", "largest_increase",
    "layer_figure", "layer_frame", "layers_section", "load_prompts", "logits_section",
    "modules_section",
    "parity_table", "pick", "plan", "pooled_topk", "run_all", "shown", "stage_store", "weight_digests",
    "weights_section",
]
