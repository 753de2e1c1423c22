"""Will it fit? What one side of a run needs in memory, estimated before anything is loaded.

A side (the target on its device, the CPU reference, the float64 golden, the CPU baseline)
needs, on the host and on its device:

  weights      parameters (counted on the meta device) x the side's dtype bytes, and buffers
  making them  full-shape random weights pass through the host once in float32
               (weights.materialize), so 4 bytes a parameter there whatever the dtype (an
               upper bound: a recipe makes one component at a time, so a bfloat16 GPA side
               peaks near 3 GiB, not the 4.8 GiB counted)
  reading them a release folder's weight files, mapped while from_pretrained reads them
               (their size on disk; the tiny profile's cache folder likewise)
  KV cache     layers x 2 (K, V) x KV heads x head_dim x positions x batch x dtype bytes
  activations  one decoder layer at the longest prefill (hidden states, q/k/v and attention
               output, the score matrix and its softmax, the MLP's four intermediates) plus
               the logits the stages keep (float32, and their float64 copy for the metrics)

against what is free: the host's available memory (a container's cgroup limit honoured) and
the device's free memory (its driver's figure). The figures come from configs alone, so the
estimate costs a skeleton on the meta device, never a load.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from helpers.device.memory import FreeMemory
from helpers.grammar import DTYPE_BYTES

GIB = 2**30
# The longest sequence a KV cache holds in a run: Covo-Audio's release generates up to 2048
# new tokens (tasks.covo max_new_tokens) after a prompt with a 30 s clip's 375 audio positions;
# GPA's tasks stop at 512, stage 5's longest is 1024 prompt + 128 new tokens.
CACHE_POSITIONS = 2048 + 512
PREFILL_POSITIONS = 1024  # stage 5's longest prompt (sweep_prompt_lengths), one forward
LOGIT_POSITIONS = 64  # stage 4 keeps every prompt position's logits; its prompts are shorter
# kept back from the free memory for what the estimate leaves out (allocator slack, Python
# objects, outputs): calibration in tests/test_memory_budget.py, where the estimate of a GPA
# reference came within 0.1 % of the measured peak RSS at full shape and 31 % above it at tiny
HEADROOM = 0.10
PARTS = ("host", "device", "disk")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass(frozen=True)
class Line:
    """One thing a side holds at its peak: where (host or device), what, how many bytes."""

    part: str
    what: str
    bytes: int


@dataclass(frozen=True)
class Estimate:
    """What one side needs per part against what is free there."""

    side: str  # e.g. "reference cpu float32"
    lines: tuple[Line, ...]
    free: dict[str, FreeMemory]  # part -> what is free (the device part only on an accelerator)

    def need(self, part: str) -> int:
        return sum(line.bytes for line in self.lines if line.part == part)

    def short(self, part: str) -> int:
        """Bytes missing on `part` (0 when the need fits under the free memory less HEADROOM)."""
        if part not in self.free:
            return 0
        return max(self.need(part) - int(self.free[part].bytes * (1 - HEADROOM)), 0)

    @property
    def fits(self) -> bool:
        return not any(self.short(p) for p in PARTS)

    def rows(self) -> list[dict[str, Any]]:
        """One row per line, then per part the total against what is free (GiB)."""
        rows = [{"side": self.side, "part": x.part, "what": x.what, "GiB": x.bytes / GIB}
                for x in self.lines]
        for part, free in self.free.items():
            rows.append({"side": self.side, "part": part, "what": f"total needed; free "
                         f"{free.bytes / GIB:.2f} GiB ({free.source}), "
                         f"{HEADROOM:.0%} kept back", "GiB": self.need(part) / GIB})
        return rows

    def text(self) -> str:
        """The figures in a few lines: each need, then per part needed against free."""
        out = [f"{self.side}:"]
        out += [f"  {x.part:<6} {x.bytes / GIB:8.2f} GiB  {x.what}" for x in self.lines]
        for part, free in self.free.items():
            verdict = (f"short by {self.short(part) / GIB:.2f} GiB" if self.short(part)
                       else "fits")
            out.append(f"  {part}: needs {self.need(part) / GIB:.2f} GiB, free "
                       f"{free.bytes / GIB:.2f} GiB ({free.source}; {HEADROOM:.0%} kept back)"
                       f": {verdict}")
        return "\n".join(out)


# ---- what the model is ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The figures the estimate reads from a recipe's configs."""

    parameters: int  # every component, a tied tensor once
    buffer_bytes: int  # non-parameter tensors (positions, filters), as the skeleton holds them
    file_bytes: int  # weight files read (0 for random weights)
    lm: dict[str, int]  # layers, kv_heads, head_dim, heads, hidden, intermediate, vocab


DECODER_FIELDS = ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size",
                  "intermediate_size")


def _decoder(configs: dict[str, Any]) -> Any:
    """The decoder LM's config: component "lm", or the text config nested in a composite one
    (Covo-Audio's llm_config); None for a model without one."""
    found = [configs["lm"]] if "lm" in configs else list(configs.values())
    for cfg in found:
        for inner in (getattr(cfg, "llm_config", None), getattr(cfg, "text_config", None), cfg):
            if inner is not None and all(hasattr(inner, k) for k in DECODER_FIELDS):
                return inner
    return None


def _lm_dims(configs: dict[str, Any]) -> dict[str, int]:
    """The decoder's dimensions ({} when the model has no decoder LM)."""
    text = _decoder(configs)
    if text is None:
        return {}
    heads = int(text.num_attention_heads)
    return {"layers": int(text.num_hidden_layers), "heads": heads,
            "kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(text, "head_dim", None) or text.hidden_size // heads),
            "hidden": int(text.hidden_size), "intermediate": int(text.intermediate_size),
            "vocab": int(text.vocab_size)}


@lru_cache(maxsize=16)
def shape(recipe: Any, profile: str, model_dir: str = "", seed: int = 0) -> Shape:
    """Parameter and buffer counts and LM dimensions of a recipe at PROFILE, from configs only
    (skeletons on the meta device)."""
    from helpers.models.weights import quiet

    configs = recipe.shape_configs(profile, model_dir)
    with quiet():
        skel = recipe.skeletons(configs)
    parameters = sum(p.numel() for m in skel.values() for p in m.parameters())  # tied: once
    buffers = sum(b.numel() * b.element_size() for m in skel.values() for b in m.buffers())
    return Shape(parameters=parameters, buffer_bytes=buffers,
                 file_bytes=_file_bytes(recipe, profile, model_dir, seed, parameters),
                 lm=_lm_dims(configs))


def _file_bytes(recipe: Any, profile: str, model_dir: str, seed: int, parameters: int) -> int:
    """Bytes of the weight files a load reads: MODEL_DIR's, or the tiny cache's."""
    from helpers.models.cache import folder

    if profile == "full-shape":
        return 0
    root = Path(model_dir) if profile == "real" else folder(recipe, seed)
    folders = {recipe.component_dir(root, name) for name in recipe.component_names()}  # shared: once
    total = sum(f.stat().st_size for folder in folders for pattern in WEIGHT_FILES
                for f in folder.glob(pattern) if f.is_file())
    if not total and profile == "tiny":  # not built yet: save_pretrained writes float32
        total = parameters * 4
    return total


# ---- the estimate ---------------------------------------------------------------------------


def kv_cache_bytes(lm: dict[str, int], positions: int, batch: int, nbytes: int) -> int:
    """layers x (K, V) x KV heads x head_dim x positions x batch x dtype bytes."""
    return lm["layers"] * 2 * lm["kv_heads"] * lm["head_dim"] * positions * batch * nbytes


def activation_bytes(lm: dict[str, int], positions: int, batch: int, nbytes: int) -> int:
    """One decoder layer's live tensors at a prefill of `positions`, plus the kept logits."""
    tokens = batch * positions
    hidden = 4 * tokens * lm["hidden"]  # residual, norm output, attention output, MLP output
    qkv = tokens * (2 * lm["heads"] + 2 * lm["kv_heads"]) * lm["head_dim"]  # q, k, v, context
    scores = 2 * batch * lm["heads"] * positions * positions  # math path: scores, softmax
    mlp = 4 * tokens * lm["intermediate"]  # gate, up, act(gate), act(gate) * up
    logits = batch * LOGIT_POSITIONS * lm["vocab"] * (4 + 8)  # float32, and its float64 copy
    return (hidden + qkv + scores + mlp) * nbytes + logits


def estimate(recipe: Any, profile: str, role: str, device: str, dtype: str, *,
             model_dir: str = "", seed: int = 0, offload: bool = False,
             free: dict[str, FreeMemory] | None = None, batch: int = 1,
             positions: int = CACHE_POSITIONS, prefill: int = PREFILL_POSITIONS) -> Estimate:
    """What one side of a run of `recipe` (a helpers.models.base.Recipe) needs on the host and
    its device, against `free` (part -> FreeMemory).

    `device` is a torch device string ("cpu", "cuda:0"); `dtype` a name of DTYPE_BYTES.
    offload: the side's weights beyond the free host memory are read from an offload folder
    layer by layer (accelerate's disk offload), so they are not counted on the host.
    positions / prefill: the KV cache's length and the longest single forward (the run's:
    CACHE_POSITIONS, PREFILL_POSITIONS).
    """
    s = shape(recipe, profile, model_dir, seed)
    b = DTYPE_BYTES[dtype]
    on = "host" if device.startswith("cpu") else "device"
    lines = [Line(on, f"weights: {s.parameters:,} parameters x {b} bytes ({dtype})",
                  s.parameters * b)]
    if s.buffer_bytes >= 2**20:
        lines.append(Line(on, "buffers (positions, filters, rotary tables)", s.buffer_bytes))
    if profile == "full-shape":
        made = s.parameters * 4 if on == "device" else s.parameters * max(4 - b, 0)
        if made:
            lines.append(Line("host", "random weights made in float32 on the host first"
                              + ("" if on == "device" else " (beyond the weights)"), made))
    elif s.file_bytes:
        lines.append(Line("host", "weight files mapped while read", s.file_bytes))
        if on == "device":  # read onto the host, then moved
            lines.append(Line("host", f"weights read onto the host in {dtype}, then moved",
                              s.parameters * b))
    if s.lm:
        lines.append(Line(on, f"KV cache: {s.lm['layers']} layers x 2 x {s.lm['kv_heads']} KV "
                          f"heads x {s.lm['head_dim']} x {positions} positions x batch "
                          f"{batch}", kv_cache_bytes(s.lm, positions, batch, b)))
        lines.append(Line(on, f"largest activation: one layer at a {prefill}-position "
                          f"prefill, and {LOGIT_POSITIONS} positions of logits "
                          f"(vocabulary {s.lm['vocab']:,}) in float32 and float64",
                          activation_bytes(s.lm, prefill, batch, b)))
    if offload:
        lines = _offloaded(lines, free or {})
    return Estimate(f"{role} {device} {dtype}" + (" (disk offload)" if offload else ""),
                    tuple(lines), free or {})


def weights_room(free: int, others: int) -> int:
    """Host bytes an offloaded side's weights may take: the free memory less HEADROOM and
    less what the side holds besides its weights (`others`)."""
    return max(int(free * (1 - HEADROOM)) - others, 0)


def offload_room(skel: dict[str, Any], dtype: Any) -> int:
    """weights_room now, for a side about to be loaded with disk offload (meta skeletons)."""
    from helpers.device.memory import host_free

    b = dtype.itemsize
    lm = _lm_dims({n: m.config for n, m in skel.items() if hasattr(m, "config")})
    others = sum(x.numel() * x.element_size() for m in skel.values() for x in m.buffers())
    if lm:
        others += (kv_cache_bytes(lm, CACHE_POSITIONS, 1, b)
                   + activation_bytes(lm, PREFILL_POSITIONS, 1, b))
    return weights_room(host_free().bytes, others)


def _offloaded(lines: list[Line], free: dict[str, FreeMemory]) -> list[Line]:
    """The weights line split: what the free host memory holds stays, the rest goes to disk."""
    weights, rest = lines[0], lines[1:]
    others = sum(x.bytes for x in rest if x.part == "host" and "mapped" not in x.what)
    kept = (min(weights.bytes, weights_room(free["host"].bytes, others)) if "host" in free
            else weights.bytes)
    out = [Line("host", f"{weights.what}, the part held in memory", kept)]
    if weights.bytes > kept:
        out.append(Line("disk", "weights offloaded to disk, read layer by layer",
                        weights.bytes - kept))
    # an offloaded read maps one file at a time: drop the whole-folder mapping line
    return out + [x for x in rest if "mapped" not in x.what]


# ---- saying so ------------------------------------------------------------------------------

# What a bfloat16 reference costs (REFERENCE_FIT=bfloat16), said wherever one is used.
BFLOAT16_COST = (
    "The CPU reference runs in bfloat16 (REFERENCE_FIT=bfloat16: float32 did not fit in the "
    "memory free here). It rounds every weight and activation to 8 significant bits, as a "
    "bfloat16 target does (0.65 % relative L2 on the tiny profile's logits against float32), "
    "so a target error smaller than that is hidden in the reference's own rounding, and the "
    "float64 golden, at 8 bytes a parameter, cannot be held either: the MindStudio benchmark "
    "ratios are not computed. A PASS here is weaker than one against a float32 reference.")

OFFLOAD_NOTE = (
    "This CPU side's weights did not fit in the memory free here (REFERENCE_FIT=offload): "
    "the layers past what fits are read from disk at every forward (accelerate's disk "
    "offload), so it computes the same numbers, slowly; its timings are not a "
    "measure of the CPU.")


def refusal(est: Estimate) -> str:
    """The message of a side that was not loaded: what it needs, per part, against what is free."""
    return (f"{est.side} cannot be held in the memory free here, so it was not loaded (nothing "
            f"was allocated); the estimate (helpers.models.footprint):\n{est.text()}")


def ways_out(role: str, chosen: str, profile: str, ways: dict[str, Estimate]) -> str:
    """The ways out for a side that does not fit, with the figures of those REFERENCE_FIT can
    take (`ways`: name -> the estimate of that way); the chosen one marked."""
    if role == "target":
        return ("ways out: a smaller DTYPE (bfloat16 halves float32's weights); DEVICE_MAP=auto "
                "to spread the model over every visible device; a machine (or a container "
                "limit) with the memory the estimate names")
    lines = ["ways out:",
             "REFERENCE=<run>: reuse the CPU sides of a run made where they fit (same "
             "weights, inputs and settings), so nothing is computed here",
             "BASELINE=<run>: hold this target to the saved outputs of a run made elsewhere "
             "(for example on the GPU the model was built on)"]
    for name in ("offload", "bfloat16"):
        lines.append(_way(name, ways.get(name), profile, role) + (
            " [chosen: REFERENCE_FIT, but it does not fit either]" if chosen == name else ""))
    if role == "golden":
        lines.append("accuracy_parity.golden=off: no float64 golden (the benchmark ratios "
                     "against it are not computed)")
    return "\n  ".join(lines)


def _way(name: str, est: Estimate | None, profile: str, role: str) -> str:
    if name == "offload":
        if est is None:
            return ("REFERENCE_FIT=offload: not open here (the full-shape profile makes its "
                    "random weights whole in host memory, in float32; a recipe whose release "
                    "loader reads its own shards, as covo-audio-chat's, has no disk offload)")
        disk = est.need("disk")
        return (f"REFERENCE_FIT=offload: accelerate's disk offload, {disk / GIB:.2f} GiB of "
                f"weights read from {est.free['disk'].source.removeprefix('free disk at ')} "
                f"layer by layer at every forward (slow){_verdict(est)}")
    if est is None:
        return f"REFERENCE_FIT=bfloat16: only for the reference (this is the {role})"
    return (f"REFERENCE_FIT=bfloat16: the reference in bfloat16{_verdict(est)}; it weakens "
            "the verdicts (a target error below bfloat16's own rounding is hidden, no float64 "
            "golden)")


def _verdict(est: Estimate) -> str:
    parts = ", ".join(f"{p} {est.need(p) / GIB:.2f} GiB of {est.free[p].bytes / GIB:.2f} free"
                      for p in PARTS if p in est.free)
    return f" ({parts}: {'fits' if est.fits else 'does not fit either'})"
