"""Causal tracing: which layers and token positions, restored, bring a memorised fact back.

`locate` shows where forget and retain people are *represented* differently; causal tracing
(activation patching, as in Meng et al.'s ROME) asks where the model *recalls* a fact. For each
person, one image question whose reference answer contains the fact ("This is Alma Aldous." for
the name) is run three ways; the answer up to the fact is appended (teacher forcing), so the
measured quantity is the probability of the fact's first token at the last input token:

- **clean**: the true image -> `p_clean`; the activations of every site below are kept;
- **corrupted**: Gaussian noise on the visual tokens' embeddings as they enter the language
  model (the projector's output and, on Qwen3-VL, every DeepStack feature; standard deviation
  `noise_scale` x that person's own feature std), or another person's image (`"swap"`)
  -> `p_corrupt`;
- **patched**: the corrupted run with one site restored to its clean value at one group of
  token positions -> `p_patched`, and the recovered fraction
  `(p_patched - p_corrupt) / (p_clean - p_corrupt)`.

Sites (`COMPONENTS`): the residual stream after layer i (TransformerLens `blocks.{i}.hook_out`;
after the DeepStack injection on the layers that have one, i.e. `blocks.{i+1}.hook_in`: see
`hooks.residual_site`), the attention output of layer i (`blocks.{i}.hook_attn_out`) and its
MLP output (`blocks.{i}.hook_mlp_out`); the names and module paths come from the architecture
adapter (`lens_hook`, `layer_path`, ...). Position groups (`GROUPS`): the image tokens, the
question's tokens, the chat-template tokens, the last prompt token (the one after
`<|im_start|>assistant\n`), the teacher-forced answer prefix and the last token (where the
fact's first token is predicted; the last prompt token itself when the prefix is empty, which
leaves the `last_prompt` and `answer_prefix` groups empty: their cells are None).

Two backends, one answer: TransformerLens's `TransformerBridge` (the default; booted on a
module-tree twin of the HF model that shares every weight tensor, so nothing is copied and the
caller's model is left as it was) and nnsight on the HF model itself. Runs of several people
are packed into batches of `batch_size` rows; each run is one row of one forward pass, nothing
is recomputed.

Modules: `config` (`CausalTraceConfig`), `result` (`CausalTrace`, `PersonTrace`: matrices,
peaks, save / load), `cases` (the traced questions, their encoding, swap partners, noise,
padding), `patching` (one batched run and where its sites are), `lens_backend` and
`nnsight_backend` (one per backend), `driver` (`trace_causal`, `compare_with_locate`).
"""

from __future__ import annotations

from asru_lab.causal.cases import _cases, _pad_batch, select_items
from asru_lab.causal.config import (
    BACKENDS,
    COMPONENTS,
    CORRUPTIONS,
    GROUPS,
    CausalTraceConfig,
    CausalTraceError,
)
from asru_lab.causal.driver import compare_with_locate, describe_comparison, trace_causal
from asru_lab.causal.lens_backend import transformer_bridge
from asru_lab.causal.patching import site_names
from asru_lab.causal.result import (
    FORMAT,
    FORMAT_VERSION,
    PEAK_TIE,
    TRACE_FILE,
    CausalTrace,
    PersonTrace,
)

__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "CORRUPTIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "GROUPS",
    "PEAK_TIE",
    "TRACE_FILE",
    "CausalTrace",
    "CausalTraceConfig",
    "CausalTraceError",
    "PersonTrace",
    "compare_with_locate",
    "describe_comparison",
    "select_items",
    "site_names",
    "trace_causal",
    "transformer_bridge",
    # the encoded cases and their batching, which tests and benchmarks/bench_causal.py reuse
    "_cases",
    "_pad_batch",
]
