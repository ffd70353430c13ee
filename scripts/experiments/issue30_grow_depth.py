"""Issue #30 experiment: is the decoder's depth what slows the official multiple choice down?

A portrait's multiple choice asks picture -> person -> value -> letter in one pass of the 6
decoder layers. This script deepens a built model without changing what it computes: `--new`
copies of the second-to-last decoder layer, inserted before the last one, with their attention
and MLP output projections zeroed (each new layer adds nothing to the residual stream until
it is trained). The grown model answers as its base does, token for token; continue it with
`issue30_recall_curriculum.py --base OUT --phases mcq --steps 1500 --lrs 1e-3`.

Measured 2026-12-06 (one thread per run, two side by side; `format_quick_eval`, 48 items):
the recall stage's model A (`issue30_recall_curriculum.py`: multiple choice image / text 0.35
/ 0.42, blanks 0.98 / 1.0) grown to 8 and to 10 layers, then 1 500 multiple-choice steps at
lr 1e-3, beside the same stage on the 6-layer A (run D). All three ran run D's driver: the same
weights, batch split and sampler seeds, so only the depth differs (the committed
`issue30_recall_curriculum.py --phases mcq` is that recipe with other seeds). Image / text:

| step | 6 layers (D) | 8 layers | 10 layers |
|---|---|---|---|
| 300 | 0.40 / 0.54 | 0.40 / 0.42 | 0.38 / 0.50 |
| 600 | 0.33 / 0.56 | 0.42 / 0.56 | 0.38 / 0.58 |
| 900 | 0.40 / 0.69 | 0.33 / 0.60 | 0.44 / 0.73 |
| 1 200 | 0.46 / 0.67 | 0.42 / 0.75 | 0.44 / 0.77 |
| 1 500 | 0.48 / 0.77 | 0.40 / 0.75 | 0.48 / 0.79 |

No depth gives a clear gain over the 48-item noise (about +-0.07): the extra layers do not
speed the composition up, so depth alone is not what a faster recipe needs. Steps cost 1.3 s
(8 layers, 1 989 s in all) and 1.6 s (10, 2 359 s) against 1.0 s (6, 1 444 s) on one thread.

    .venv/bin/python scripts/experiments/issue30_grow_depth.py --base DIR --out DIR [--new 2]
"""

from __future__ import annotations

import argparse
import copy

import torch

from asru_lab.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="a built embedded model (6 layers)")
    parser.add_argument("--out", required=True, help="save the grown model here")
    parser.add_argument("--new", type=int, default=2, help="decoder layers to insert")
    args = parser.parse_args()
    lm = load_model(args.base)
    language = lm.model.model.language_model
    layers = list(language.layers)
    fresh = []
    for _ in range(args.new):
        layer = copy.deepcopy(layers[-2])
        with torch.no_grad():  # no output: the residual stream passes through unchanged
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        fresh.append(layer)
    language.layers = torch.nn.ModuleList([*layers[:-1], *fresh, layers[-1]])
    for index, layer in enumerate(language.layers):
        layer.self_attn.layer_idx = index  # the KV cache's slot
    text = lm.model.config.text_config
    text.num_hidden_layers = len(language.layers)
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[0]] * len(language.layers)
    lm.save(args.out)


if __name__ == "__main__":
    main()
