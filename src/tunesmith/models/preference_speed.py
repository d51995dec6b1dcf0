"""Speed levers for the preference stages (dpo, kto, orpo, rm): TRL's maths, less work.

TRL's DPOTrainer pads a batch of pairs into 2 x batch rows (every chosen, then every rejected
sequence, each prompt + answer) to the longest one, and its RewardTrainer does the same for the
reward model. TRL 1.1.6 turned DPOConfig.padding_free off ("temporarily unavailable"). Here:

- packed pairs: the 2 x batch sequences of a step end to end in one row, position ids
  restarting at 0 for each, so models/speed.py's packed attention gives every sequence its own
  causal SDPA (no padding is computed, no sequence sees another); `PackedPairs` builds the row.
- per-token log-probabilities through a fused output layer: the trained positions' hidden
  states times the output layer in cache-sized chunks of the vocabulary with an online softmax
  (as models/speed.py's fused loss), the (tokens x vocabulary) logits never held in memory; the
  gradient for the hidden states is computed on the way, and the reference pass (no gradient)
  skips it. `token_log_probs`, summed per sequence by `sequence_log_probs`.
- the reference: with LoRA trained from a fresh adapter, the reference policy is the base
  model; its log-probabilities come from the same packed row with the adapter disabled, under
  no_grad, in the same step (for one epoch the same work as precomputing them once up front,
  which TRL's `precompute_ref_log_probs` does before `train()`).
- kto: the completions as one packed row, the KL completions as another; the policy's KL
  log-probabilities and the reference's (adapter disabled) under no_grad.
- orpo: the same packed row; the chosen sequences' every token (its NLL term) and both answers'
  tokens (its odds ratio) through the fused output layer, no reference.
- the reward model: the packed row through the backbone, the one-output head at each sequence's
  last non-pad token (where transformers' sequence-classification models read it).

Everything else (the loss, its metrics, the optimizer) is TRL's arithmetic, re-written for the
packed sequences in train/preference.py and train/reward.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.models.speed import (
    PACKED_ATTENTION,
    head_returns_hidden_states,
    online_softmax,
    packed_sdpa_attention,
)

IGNORE = -100


# --- packed rows ----------------------------------------------------------------------------


def pack_sequences(
    sequences: list[list[int]],
    trained: list[list[int]] | None = None,
    answers: list[list[int]] | None = None,
) -> dict:
    """One packed row of `sequences` (lists of token ids) for a causal LM.

    `trained[i][j]` (0/1) says whether token j of sequence i is scored (an answer token); the
    row's log-probability terms are the positions whose *next* token in the same sequence is
    scored. Returns input_ids and position_ids (1 x tokens), and for the scored tokens:
    `positions` (index of the predicting position in the row), `targets` (the token scored),
    `segments` (which sequence), plus `ends` (each sequence's last index) and `num_sequences`.
    With `answers` (0/1 like `trained`), `answer` flags the scored tokens that are answer tokens.
    """
    ids, pos, positions, targets, segments, ends, answer = [], [], [], [], [], [], []
    offset = 0
    for k, seq in enumerate(sequences):
        ids.extend(seq)
        pos.extend(range(len(seq)))
        mask = trained[k] if trained is not None else [0] * len(seq)
        for j in range(1, len(seq)):
            if mask[j]:
                positions.append(offset + j - 1)
                targets.append(seq[j])
                segments.append(k)
                if answers is not None:
                    answer.append(bool(answers[k][j]))
        offset += len(seq)
        ends.append(offset - 1)
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "positions": torch.tensor(positions, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "segments": torch.tensor(segments, dtype=torch.long),
        "ends": torch.tensor(ends, dtype=torch.long),
        "num_sequences": torch.tensor(len(sequences)),
    }
    if answers is not None:
        batch["answer"] = torch.tensor(answer, dtype=torch.bool)
    return batch


# --- pairs sharing their prompt ----------------------------------------------------------------

PAIR_ATTENTION = "tunesmith_pair_sdpa"
LAYOUT_ATTRIBUTE = "tunesmith_pair_layout"  # set on the position ids of a row of pairs


def pack_pairs(pairs: list[tuple], answers: bool = False, reads: list | None = None) -> dict:
    """One packed row of pairs whose two sequences share a start (the prompt): per pair the
    shared prefix once, then the chosen tail, then the rejected tail; position ids count on
    from the prefix in each tail, and `pair_attention` lets each tail see the prefix and itself.

    `pairs`: (chosen ids, chosen scored 0/1, rejected ids, rejected scored 0/1[, chosen answer
    0/1, rejected answer 0/1]). Returns pack_sequences' keys for the 2 x pairs sequences (every
    chosen first, then every rejected: sequence k is pair k's chosen, pairs + k its rejected;
    a scored token of the shared prefix is listed for both), plus `pair_layout` (prefix,
    chosen tail, rejected tail lengths per pair) and `real_tokens` (every sequence whole).
    `ends` holds each sequence's last token, or with `reads` ((chosen index, rejected index)
    per pair) the token read there."""
    ids, pos, layout = [], [], []
    scored: list[tuple[int, int, int, bool]] = []  # (row index, target, sequence, answer)
    ends = [0] * (2 * len(pairs))
    offset, real, n = 0, 0, len(pairs)
    for k, pair in enumerate(pairs):
        chosen, rejected = pair[0], pair[2]
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        c_tail, r_tail = len(chosen) - shared, len(rejected) - shared
        ids += list(chosen) + list(rejected[shared:])
        pos += list(range(len(chosen))) + list(range(shared, len(rejected)))
        layout.append((shared, c_tail, r_tail))
        real += len(chosen) + len(rejected)
        sides = (
            (chosen, pair[1], pair[4] if answers else None, k, offset + shared),
            (rejected, pair[3], pair[5] if answers else None, n + k, offset + shared + c_tail),
        )
        for side, (seq, mask, answer, sequence, tail) in enumerate(sides):
            index = [offset + j if j < shared else tail + j - shared for j in range(len(seq))]
            for j in range(1, len(seq)):
                if mask[j]:
                    flag = bool(answer[j]) if answer is not None else False
                    scored.append((index[j - 1], seq[j], sequence, flag))
            ends[sequence] = index[reads[k][side] if reads is not None else len(seq) - 1]
        offset += shared + c_tail + r_tail
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "positions": torch.tensor([s[0] for s in scored], dtype=torch.long),
        "targets": torch.tensor([s[1] for s in scored], dtype=torch.long),
        "segments": torch.tensor([s[2] for s in scored], dtype=torch.long),
        "ends": torch.tensor(ends, dtype=torch.long),
        "num_sequences": torch.tensor(2 * n),
        "pair_layout": torch.tensor(layout, dtype=torch.long).reshape(-1, 3),
        "real_tokens": torch.tensor(real),
    }
    if answers:
        batch["answer"] = torch.tensor([s[3] for s in scored], dtype=torch.bool)
    return batch


def pair_positions(batch: dict) -> torch.Tensor:
    """The batch's position ids, carrying its pair layout (if any) for `pair_attention`: every
    attention layer gets this tensor, in the forward and when gradient checkpointing recomputes
    a layer in the backward, so the layout travels with it rather than in a global."""
    positions = batch["position_ids"]
    if "pair_layout" in batch:
        setattr(positions, LAYOUT_ATTRIBUTE, [tuple(x) for x in batch["pair_layout"].tolist()])
    return positions


def pair_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: on a row of pairs (`pair_layout`), each pair's shared
    prefix and chosen tail as one causal SDPA call, the rejected tail against the prefix's keys
    and its own (causal); otherwise the per-example packed attention of models/speed.py."""
    layout = getattr(kwargs.get("position_ids"), LAYOUT_ATTRIBUTE, None)
    causal = getattr(module, "is_causal", True)
    if (
        layout is None
        or torch.compiler.is_compiling()
        or not causal
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or kwargs.get("dropout")
    ):
        return packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs)
    scale, gqa = kwargs.get("scaling"), getattr(module, "num_key_value_groups", 1) > 1
    outputs, start = [], 0
    for shared, c_tail, r_tail in layout:
        first, end = start + shared + c_tail, start + shared + c_tail + r_tail
        q, k, v = (t[:, :, start:first] for t in (query, key, value))
        outputs.append(
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        )
        keys = torch.cat([key[:, :, start : start + shared], key[:, :, first:end]], dim=2)
        values = torch.cat([value[:, :, start : start + shared], value[:, :, first:end]], dim=2)
        mask = torch.ones(r_tail, shared + r_tail, dtype=torch.bool, device=query.device)
        mask[:, shared:] = torch.ones(r_tail, r_tail, dtype=torch.bool, device=query.device).tril()
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, first:end], keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa
            )
        )
        start = end
    # (batch, heads, seq, dim) -> (batch, seq, heads, dim), as sdpa_attention_forward returns
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def use_pair_attention(model) -> bool:
    """Route a model that has models/speed.py's packed attention through `pair_attention`
    (the same as the packed attention outside a pair_layout); False if it has not."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    configs = {
        id(c): c
        for m in model.modules()
        if (c := getattr(m, "config", None)) is not None
        and getattr(c, "_attn_implementation", None) in (PACKED_ATTENTION, PAIR_ATTENTION)
    }
    if not configs:
        return False
    AttentionInterface.register(PAIR_ATTENTION, pair_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PAIR_ATTENTION, sdpa_mask)
    for config in configs.values():
        config._attn_implementation_internal = PAIR_ATTENTION
    return True


class PackedPairs:
    """Data collator: a batch of pairs (prompt_ids, chosen_ids, rejected_ids) as one row of
    pairs sharing their prompt (`pack_pairs`); the answer tokens are scored. `max_length` cuts
    each sequence as TRL's collator does (keep the start)."""

    def __init__(self, max_length: int | None = None):
        self.max_length = max_length

    def __call__(self, examples: list[dict]) -> dict:
        pairs = []
        for e in examples:
            prompt = list(e["prompt_ids"])
            pair = []
            for key in ("chosen_ids", "rejected_ids"):
                seq = prompt + list(e[key])
                mask = [0] * len(prompt) + [1] * len(e[key])
                if self.max_length is not None:
                    seq, mask = seq[: self.max_length], mask[: self.max_length]
                pair += [seq, mask]
            pairs.append(tuple(pair))
        return pack_pairs(pairs)


class PackedKTORows:
    """Data collator of KTO: prompt + completion of every example as one packed row (answers
    scored), and with KL completions (TRL's: the batch's completions rotated by one) the prompt
    + KL completion sequences as a second row under "KL_" keys; `label` says desirable."""

    def __init__(self, max_length: int | None = None):
        self.max_length = max_length

    def _row(self, examples: list[dict], key: str) -> dict:
        sequences, trained = [], []
        for e in examples:
            prompt, answer = list(e["prompt_ids"]), list(e[key])
            seq, mask = prompt + answer, [0] * len(prompt) + [1] * len(answer)
            if self.max_length is not None:
                seq, mask = seq[: self.max_length], mask[: self.max_length]
            sequences.append(seq)
            trained.append(mask)
        return pack_sequences(sequences, trained)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self._row(examples, "completion_ids")
        if "KL_completion_ids" in examples[0]:
            kl = self._row(examples, "KL_completion_ids")
            batch |= {f"KL_{k}": v for k, v in kl.items()}
        batch["label"] = torch.tensor([bool(e["label"]) for e in examples])
        return batch


def kl_row(batch: dict) -> dict:
    """The KL sequences of a PackedKTORows batch as a batch of their own."""
    return {k[3:]: v for k, v in batch.items() if k.startswith("KL_")}


class PackedORPOPairs:
    """Data collator of ORPO: the rows ORPOTrainer's `tokenize_row` wrote (chosen_input_ids /
    chosen_labels, rejected_...) as one packed row, chosen first. ORPO's NLL term reads every
    token of a chosen sequence (TRL's labels are its input ids), its odds ratio the answer
    tokens (labels not -100): chosen sequences score every token, rejected ones their answer,
    and `answer` flags the answer tokens."""

    def __call__(self, examples: list[dict]) -> dict:
        pairs = []
        for e in examples:
            chosen, rejected = list(e["chosen_input_ids"]), list(e["rejected_input_ids"])
            chosen_answer = [int(t != IGNORE) for t in e["chosen_labels"]]
            rejected_answer = [int(t != IGNORE) for t in e["rejected_labels"]]
            pairs.append(
                (
                    chosen,
                    [1] * len(chosen),
                    rejected,
                    rejected_answer,
                    chosen_answer,
                    rejected_answer,
                )
            )
        return pack_pairs(pairs, answers=True)


class PackedRewardPairs:
    """Data collator of the reward model: chosen_ids then rejected_ids (whole sequences) as one
    packed row; the reward is read at each sequence's last token that is not the pad token
    (transformers' sequence-classification rule), kept in `ends`."""

    def __init__(self, pad_token_id: int | None, max_length: int | None = None):
        self.pad_token_id, self.max_length = pad_token_id, max_length

    def __call__(self, examples: list[dict]) -> dict:
        pairs = []
        for e in examples:
            chosen, rejected = (
                list(e[k])[: self.max_length] if self.max_length else list(e[k])
                for k in ("chosen_ids", "rejected_ids")
            )
            pairs.append((chosen, [0] * len(chosen), rejected, [0] * len(rejected)))
        # the reward sits at the last token that is not the pad token (transformers' rule; no
        # real token: position 0, where argmax of an all-zero mask points)
        reads = [tuple(self._last_real(seq) for seq in (pair[0], pair[2])) for pair in pairs]
        return pack_pairs(pairs, reads=reads)

    def _last_real(self, seq: list[int]) -> int:
        real = [j for j, t in enumerate(seq) if t != self.pad_token_id]
        return real[-1] if real else 0


def packed_tokens(batch: dict, with_kl: bool = True) -> int:
    """The real tokens a packed batch holds (no padding: every one), KTO's KL row included
    unless with_kl is False."""
    tokens = int(batch["real_tokens"]) if "real_tokens" in batch else batch["input_ids"].numel()
    if with_kl and "KL_input_ids" in batch:
        tokens += int(batch["KL_input_ids"].numel())
    return tokens


# --- log-probabilities through the fused output layer ---------------------------------------


def token_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """log softmax(hidden @ weight^T)[row, targets[row]] for every row, the vocabulary in chunks;
    differentiable in `hidden` (the output layer is frozen)."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _TokenLogProbs.apply(hidden, weight, targets)
    return _online_log_probs(hidden, weight, targets, with_grad=False)[0]


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        log_probs, grad = _online_log_probs(hidden, weight, targets, with_grad=True)
        ctx.save_for_backward(grad)
        return log_probs

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors  # d log p / d hidden per row
        return grad * grad_out.unsqueeze(-1), None, None


def _online_log_probs(hidden, weight, targets, with_grad: bool):
    """(log p of each row's target, d log p / d hidden or None), through speed.online_softmax:
    log p = logit[target] - lse, its gradient W[target] - E[W]."""
    lse, expected = online_softmax(hidden, weight, with_grad)
    target_rows = weight[targets]
    log_probs = torch.linalg.vecdot(hidden, target_rows) - lse.squeeze(-1)
    return log_probs, (target_rows - expected) if with_grad else None


def sequence_log_probs(model, head: torch.nn.Linear, batch: dict) -> tuple:
    """(summed log-probability of each packed sequence's scored tokens, per-token log-probs):
    the model reads the packed row, only the scored positions' hidden states reach the output
    layer (fused, `token_log_probs`)."""
    positions = batch["positions"]
    with head_returns_hidden_states(head):
        outputs = model(
            input_ids=batch["input_ids"],
            position_ids=pair_positions(batch),
            logits_to_keep=positions,
            use_cache=False,
        )
    hidden = outputs.logits[0]  # (scored tokens, hidden size)
    per_token = token_log_probs(hidden, head.weight, batch["targets"])
    n = int(batch["num_sequences"])
    sums = per_token.new_zeros(n).index_add(0, batch["segments"], per_token)
    return sums, per_token


def sequence_rewards(model, batch: dict) -> torch.Tensor:
    """The reward of each packed sequence: a sequence-classification model's backbone reads the
    packed row, its one-output head scores each sequence's `ends` position."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(
        input_ids=batch["input_ids"], position_ids=pair_positions(batch), use_cache=False
    ).last_hidden_state
    picked = hidden[0, batch["ends"]]  # (sequences, hidden size)
    return base.score(picked).squeeze(-1).float()


def reward_head_supported(model) -> bool:
    """Whether `sequence_rewards` computes what the model's forward does: a decoder whose
    sequence-classification head is `score` applied to the backbone's last hidden state."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", None)
    return (
        prefix is not None
        and hasattr(base, prefix)
        and hasattr(base, "score")
        and getattr(base.config, "num_labels", None) == 1
        and getattr(getattr(base, prefix), "config", None) is not None
        and not getattr(base.config, "is_encoder_decoder", False)
    )


def adapter_is_fresh(model, name: str) -> bool:
    """Whether the LoRA adapter `name` adds nothing (every lora_B zero, as PEFT initialises it),
    so that the model with it equals the model with adapters disabled."""
    found = False
    for module in model.modules():
        lora_b = getattr(module, "lora_B", None)
        if isinstance(lora_b, torch.nn.ModuleDict) and name in lora_b:
            found = True
            if torch.count_nonzero(lora_b[name].weight) or lora_b[name].bias is not None:
                return False
        if name in getattr(module, "lora_embedding_B", {}) or name in getattr(
            module, "lora_magnitude_vector", {}
        ):
            return False
    return found
