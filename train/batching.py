"""Micro-batches: which rows go together, and how they become tensors.

Two layouts, the same rows and the same loss:
- **packed** (padding-free): a micro-batch is ONE row of several documents laid end to end.
  Each document keeps its own position ids (0, 1, ...) and its first label is masked, and the
  attention kernel gets the document boundaries (``cu_seq_lens``), so no token attends across
  documents and no pad token is computed. Needs a varlen kernel (``attention.py``, CUDA); on
  CPU transformers builds the same block-diagonal mask from the position ids (used by tests).
- **grouped**: rows of similar length padded to the longest in their batch (pad = the format's
  pad token, label -100, attention mask 0): little padding without any special kernel.

The order is a pure function of (seed, epoch), so a resumed run sees the same batches.
Rows listed in ``first`` open every epoch (shuffled among themselves): a continued adapter's
new rows, such as feedback corrections, are trained even when a time budget ends the run a few
steps into its first epoch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .encode import IGNORE, Encoded

GROUP_WINDOW = 256  # rows sorted together by length before cutting grouped batches


def plan_packed(lengths: list[int], order: list[int], batch_tokens: int, max_rows: int):
    batches, current, used = [], [], 0
    for i in order:
        if current and (used + lengths[i] > batch_tokens or len(current) >= max_rows):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


def plan_grouped(lengths: list[int], order: list[int], batch_tokens: int, max_rows: int,
                 rng: random.Random | None):
    batches = []
    for w in range(0, len(order), GROUP_WINDOW):
        window = sorted(order[w:w + GROUP_WINDOW], key=lambda i: -lengths[i])
        current = []
        for i in window:  # longest first, so the first row of a batch sets its width
            if current and ((len(current) + 1) * lengths[current[0]] > batch_tokens
                            or len(current) >= max_rows):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


@dataclass
class BatchPlan:
    """The stream of micro-batches over epochs; optimizer step k uses global micro-batches
    [k*accum*world, (k+1)*accum*world), and rank r takes every world-th of them."""

    examples: list[Encoded]
    packed: bool
    batch_tokens: int
    max_rows: int
    seed: int
    shuffle: bool = True
    first: frozenset[int] = frozenset()  # example indices that open each epoch

    def __post_init__(self):
        self._lengths = [len(e) for e in self.examples]
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, n: int) -> list[list[int]]:
        if n not in self._epochs:
            order = list(range(len(self.examples)))
            rng = random.Random(self.seed * 100_003 + n) if self.shuffle else None
            if rng is not None:
                rng.shuffle(order)
            plan = plan_packed if self.packed else (
                lambda *a: plan_grouped(*a, rng=rng))
            # an empty head plans no batch and draws nothing from rng: without ``first`` the
            # order is what it was before ``first`` existed
            head = [i for i in order if i in self.first]
            tail = [i for i in order if i not in self.first]
            self._epochs[n] = (plan(self._lengths, head, self.batch_tokens, self.max_rows)
                               + plan(self._lengths, tail, self.batch_tokens, self.max_rows))
        return self._epochs[n]

    def micro_batches_per_epoch(self) -> int:
        return len(self.epoch(0))

    def micro_batch(self, index: int) -> list[Encoded]:
        epoch, per = 0, len(self.epoch(0))
        while index >= per:
            index -= per
            epoch += 1
            per = len(self.epoch(epoch))
        return [self.examples[i] for i in self.epoch(epoch)[index]]

    def step(self, step: int, accum: int, world: int = 1) -> list[list[Encoded]]:
        """All ranks' micro-batches of optimizer step ``step``, in rank-major order."""
        first = step * accum * world
        return [self.micro_batch(first + j) for j in range(accum * world)]


def total_steps(plan: BatchPlan, epochs: float, accum: int, world: int) -> int:
    return max(1, math.ceil(epochs * plan.micro_batches_per_epoch() / (accum * world)))


def trained_tokens(batch: list[Encoded]) -> int:
    """Label tokens the loss counts (the first label of a document is never predicted)."""
    return sum(sum(label != IGNORE for label in e.labels[1:]) for e in batch)


def collate_packed(batch: list[Encoded]) -> dict:
    import torch

    ids, labels, positions, bounds = [], [], [], [0]
    for e in batch:
        ids += e.input_ids
        labels += [IGNORE] + e.labels[1:]  # nothing before a document predicts its first token
        positions += range(len(e))
        bounds.append(bounds[-1] + len(e))
    longest = max(len(e) for e in batch)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        # read by the varlen attention kernel (transformers' flash-attention kwarg names)
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
        "max_length_q": longest, "max_length_k": longest,
        # transformers derives the per-document mask from position ids only without a KV cache
        "use_cache": False,
    }


def collate_grouped(batch: list[Encoded], pad_id: int) -> dict:
    import torch

    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def real_tokens(batch: list[Encoded]) -> int:
    return sum(len(e) for e in batch)
