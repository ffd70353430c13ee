"""The `asru_paper` protocol: the ASRU authors' variant of MLLMU-Bench's evaluation.

- Image questions only: text-only items are not evaluated (a benchmark split without image
  questions is an error).
- Multiple choice: a reply counts only when everything before its first ":" (stripped) is an
  option key, exactly (`mcq_choice`). Our reading of "otherwise as mllmu": a reply without any
  ":" is read by MLLMU-Bench's rule (its first character, upper-cased), so "B" and "B. Oslo"
  choose B, while "Answer: B" chooses nothing ("Answer" is not a key).
- Everything else — prompts, few-shot examples, 50 new tokens, cloze and generation scoring,
  the test image per person — as `mllmu`. Generation answers are also judged (`refusal_rate`
  and the `quality` block, as the authors report a GPT judge's scores beside the benchmark's).
"""

from __future__ import annotations

from collections.abc import Sequence

from asru_lab.data.schema import BenchmarkError, QAItem
from asru_lab.evaluation.protocols import mllmu


def mcq_choice(reply: str, keys: Sequence[str]) -> str | None:
    """The option key a reply chooses under the ASRU authors' rule, or None (counted wrong):
    with a ":", the text before the first one, stripped, when it is one of `keys`; without a
    ":", MLLMU-Bench's rule (`mllmu.mcq_choice`)."""
    if ":" not in reply:
        return mllmu.mcq_choice(reply, keys)
    head = reply.split(":", 1)[0].strip()
    return head if head in keys else None


class AsruPaperProtocol(mllmu.MllmuProtocol):
    """The ASRU authors' variant (module docstring)."""

    name = "asru_paper"
    needs_images = True
    uses_judge = True
    choose = staticmethod(mcq_choice)

    def evaluates(self, item: QAItem) -> bool:
        return item.has_image

    def select(self, split: str, items: Sequence[QAItem]) -> list[QAItem]:
        if items and not any(i.has_image for i in items):
            raise BenchmarkError(
                f"protocol {self.name!r} evaluates image questions only, and split {split!r} of "
                f"{self.bench.name} has none ({len(items)} text-only items); evaluate it with "
                "protocol 'mllmu' or 'asru_lab', or leave the split out"
            )
        return super().select(split, items)
