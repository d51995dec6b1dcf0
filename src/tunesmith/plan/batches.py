"""Padded batches (stage cls): the batches the trainer forms from the examples' lengths, and
what they cost.

train/cls.py pads each batch to its longest example, rounded up to a multiple of 8
(DataCollatorWithPadding), so a step's time follows its padded length L: the linear layers
cost about L per row, attention about L^2. A first-token encoder under train.optimize drops
the padding again (models/packed_encoder.py): each text then costs what its own length does.
The trainer's sampler decides which examples share a batch: `group_by_length` (transformers'
LengthGroupedSampler: shuffled megabatches of up to 50 batches, each sorted by length) pads
little, `random` pads every batch to its longest.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

PAD_MULTIPLE = 8  # DataCollatorWithPadding(pad_to_multiple_of=8) in train/cls.py
MEGABATCHES = 50  # LengthGroupedSampler's largest megabatch, in batches


def padded(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def epoch_lengths(sample: Sequence[int], count: int, seed: int) -> list[int]:
    """`count` example lengths distributed as the sample's: the sample repeated, the rest
    drawn from it."""
    whole, rest = divmod(count, len(sample))
    return list(sample) * whole + random.Random(seed).sample(list(sample), rest)


def epoch_batches(
    lengths: Sequence[int],
    batch: int,
    sampler: str,
    seed: int,
    group: int | None = None,
    packed: bool = False,
) -> Counter:
    """{(rows, padded length): count} the layers compute in one epoch over examples of
    `lengths`, ordered as `sampler` orders them. group_by_length sorts within megabatches of up
    to 50 groups of `group` examples (the sampler's batch: batch x gradient accumulation).
    packed (a padding-free encoder batch, models/packed_encoder.py): each text is computed at
    its own length, {(1, length): texts}, whichever batches they share."""
    if packed:
        return Counter((1, n) for n in lengths)
    order = list(lengths)
    if sampler != "sequential":
        random.Random(seed).shuffle(order)
    if sampler == "group_by_length":
        group = group or batch
        size = group * (min(len(order) // (group * 4), MEGABATCHES) or 1)
        order = [
            n for i in range(0, len(order), size) for n in sorted(order[i : i + size], reverse=True)
        ]
    return Counter(
        (len(chunk), padded(max(chunk)))
        for chunk in (order[i : i + batch] for i in range(0, len(order), batch))
    )


def padded_tokens(batches: Counter) -> int:
    return sum(rows * length * n for (rows, length), n in batches.items())


@dataclass(frozen=True)
class RowCost:
    """Seconds of one row padded to L tokens, a + b L + c L^2 (a, b, c >= 0), plus a fixed
    cost per optimizer step."""

    a: float
    b: float
    c: float
    step: float = 0.0

    def __call__(self, length: float) -> float:
        return self.a + self.b * length + self.c * length**2

    def seconds(self, batches: Counter, optimizer_steps: float = 0.0) -> float:
        """Time of `batches` ({(rows, length): count}, each row at its length) and of
        `optimizer_steps` optimizer steps."""
        rows = sum(r * self(length) * n for (r, length), n in batches.items())
        return rows + self.step * optimizer_steps

    @classmethod
    def fit(cls, points: Sequence[tuple[int, float]], step: float = 0.0) -> RowCost:
        """The non-negative a, b, c closest (least squares, relative) to measured
        (length, seconds per row) points: every subset of terms is solved, the best
        non-negative solution kept (NNLS for three unknowns)."""
        lengths = np.array([p[0] for p in points], dtype=float)
        seconds = np.array([p[1] for p in points], dtype=float)
        terms = np.stack([np.ones_like(lengths), lengths, lengths**2], axis=1) / seconds[:, None]
        best, best_error = (0.0, float(np.mean(seconds / lengths)), 0.0), float("inf")
        for size in (1, 2, 3):
            for chosen in combinations(range(3), size):
                solution, *_ = np.linalg.lstsq(terms[:, chosen], np.ones(len(points)), rcond=None)
                if (solution < 0).any():
                    continue
                full = np.zeros(3)
                full[list(chosen)] = solution
                error = float(np.sum((terms @ full - 1) ** 2))
                if error < best_error - 1e-12:
                    best, best_error = tuple(float(x) for x in full), error
        return cls(*best, step=step)
