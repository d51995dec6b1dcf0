"""The cache-sized attention with dropout (models/dropout_attention.py) computes what the eager
attention computes with the same dropout mask: outputs and gradients, with padding masks."""

import pytest
import torch

from tunesmith.models import dropout_attention as module
from tunesmith.models.dropout_attention import dropout_attention


def eager(query, key, value, mask, keep, dropout, scale):
    scores = query @ key.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep / (1 - dropout)
    return probs @ value


def tensors(batch=2, heads=3, length=7, dim=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, heads, length, dim, generator=generator, dtype=dtype, requires_grad=True)
        for _ in range(3)
    ]


def padding_mask(batch, length, real):
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    for row, n in enumerate(real):
        mask[row, ..., :n] = True
    return mask


@pytest.fixture
def recorded_keep(monkeypatch):
    """The masks the function draws, in draw order, so the eager reference can use them."""
    drawn = []
    original = module.draw_keep

    def draw(probs, dropout):
        keep = original(probs, dropout)
        drawn.append(keep.clone())
        return keep

    monkeypatch.setattr(module, "draw_keep", draw)
    return drawn


def full_keep(drawn, batch, heads):
    # groups run example by example, heads in order: stitch them back into (batch, heads, L, L)
    rows, index = [], 0
    for _ in range(batch):
        parts = []
        while sum(p.shape[0] for p in parts) < heads:
            parts.append(drawn[index])
            index += 1
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("heads_per_group", [1, 2, 3])
def test_equals_eager_attention_with_the_same_dropout_mask(
    recorded_keep, monkeypatch, heads_per_group
):
    length = 7
    monkeypatch.setattr(module, "_GROUP_ELEMENTS", heads_per_group * length * length)
    query, key, value = tensors(length=length)
    mask, dropout, scale = padding_mask(2, length, [7, 4]), 0.3, 0.5
    torch.manual_seed(1)
    out = dropout_attention(query, key, value, mask, dropout, scale)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (query, key, value), grad)
    keep = full_keep(recorded_keep, 2, 3)
    assert 0.5 < keep.double().mean() < 0.9  # some dropped, most kept
    reference = eager(query, key, value, mask, keep, dropout, scale)
    theirs = torch.autograd.grad(reference, (query, key, value), grad)
    torch.testing.assert_close(out, reference)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_without_dropout_equals_pytorch_sdpa():
    query, key, value = tensors(dtype=torch.float32)
    mask = padding_mask(2, 7, [5, 7])
    out = dropout_attention(query, key, value, mask, 0.0, 4**-0.5)
    sdpa = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (query, key, value))
    expected = torch.autograd.grad(sdpa.sum(), (query, key, value))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_additive_mask_and_gradcheck(recorded_keep):
    query, key, value = tensors(batch=1, heads=2, length=5, dim=3)
    bias = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    bias[..., 3:] = -1e9

    def fixed_mask(q, k, v):
        recorded_keep.clear()
        torch.manual_seed(3)  # the same mask at every evaluation of gradcheck
        return dropout_attention(q, k, v, bias, 0.2, 0.7)

    assert torch.autograd.gradcheck(fixed_mask, (query, key, value))


def test_dropout_rate_and_scale_keep_the_expectation():
    torch.manual_seed(0)
    query, key, value = (torch.randn(4, 4, 64, 8) for _ in range(3))
    plain = dropout_attention(query, key, value, None, 0.0, 8**-0.5)
    dropped = torch.stack(
        [dropout_attention(query, key, value, None, 0.5, 8**-0.5) for _ in range(200)]
    )
    # E[dropout(p) @ V] = p @ V: the mean of many draws approaches the undropped output
    assert (dropped.mean(0) - plain).abs().mean() < 0.05 * plain.abs().mean() + 0.02


def test_an_encoder_in_training_takes_it_and_evaluation_is_unchanged(monkeypatch):
    import copy

    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    from tunesmith.models.speed import use_packed_attention

    torch.manual_seed(0)
    config = tiny_bert_config(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    # every probability kept and scaled by 1 / 0.9 is attention over V / 0.9: the same model
    # with its value projections scaled, evaluated on SDPA, is the expected output
    scaled = copy.deepcopy(model).eval()
    for layer in scaled.bert.encoder.layer:
        layer.attention.self.value.weight.data /= 0.9
        layer.attention.self.value.bias.data /= 0.9
    expected = scaled(input_ids=ids, attention_mask=mask).logits
    model.eval()
    before = model(input_ids=ids, attention_mask=mask).logits
    assert use_packed_attention(model)
    calls = []
    original = module.dropout_attention
    monkeypatch.setattr(module, "dropout_attention", lambda *a: calls.append(a[4]) or original(*a))
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)
    assert calls == []  # evaluation (no dropout) stays on SDPA
    model.train()
    monkeypatch.setattr(module, "draw_keep", lambda probs, p: torch.ones_like(probs).bool())
    trained = model(input_ids=ids, attention_mask=mask).logits
    assert calls == [0.1, 0.1]  # both layers
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-6)


def test_a_causal_decoder_with_attention_dropout_stays_causal(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.models.speed import use_packed_attention

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        attention_dropout=0.5,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 50, (1, 8))
    model.eval()
    reference = model(input_ids=ids).logits
    assert use_packed_attention(model)
    model.train()
    monkeypatch.setattr(
        module, "draw_keep", lambda probs, p: torch.ones_like(probs, dtype=torch.bool)
    )
    # kept = 1 everywhere, scaled by 1 / (1 - 0.5): the same as no dropout with V doubled;
    # a later token changing must not move an earlier position's logits (causal)
    first = model(input_ids=ids).logits
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    second = model(input_ids=changed).logits
    torch.testing.assert_close(first[0, :-1], second[0, :-1])
    assert not torch.allclose(first[0, -1], second[0, -1])
    assert not torch.allclose(first, reference)  # the dropout path ran (its 2x scale shows)
