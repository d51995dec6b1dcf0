"""Padding-free classification batches (models/packed_encoder.py) give the padded batch's logits
and gradients, for each first-token encoder family, with LoRA and full training."""

import pytest
import torch
from conftest import tiny_bert_config

from tunesmith.models import dropout_attention
from tunesmith.models.packed_encoder import ROW_MULTIPLE, packed_forward, packs
from tunesmith.models.speed import optimize_for_training

LENGTHS = [9, 3, 14, 6]  # real tokens per text of the batch; padded to 16


def _roberta(**overrides):
    from transformers import RobertaConfig

    fields = tiny_bert_config().to_dict() | {"pad_token_id": 1, "max_position_embeddings": 40}
    fields.pop("model_type", None)
    return RobertaConfig(**(fields | overrides))


def _electra(**overrides):
    from transformers import ElectraConfig

    fields = tiny_bert_config().to_dict() | {"embedding_size": 16}
    fields.pop("model_type", None)
    return ElectraConfig(**(fields | overrides))


FAMILIES = {"bert": tiny_bert_config, "roberta": _roberta, "electra": _electra}


def classifier(family: str, method: str, **overrides):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = FAMILIES[family](**overrides)
    config._attn_implementation = "sdpa"
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    if method == "lora":
        targets = ["query", "key", "value", "dense"]
        lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets)
        model = get_peft_model(model, lora)
        for name, param in model.named_parameters():  # B = 0 would hide a wrong input to B
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    return optimize_for_training(model)


def padded_batch(pad_id: int, token_types: bool = True) -> dict:
    generator = torch.Generator().manual_seed(1)
    length = 16
    ids = torch.full((len(LENGTHS), length), pad_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = torch.randint(3, 100, (n,), generator=generator)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:  # a text pair: the second part from the middle on
        types = torch.zeros_like(ids)
        for row, n in enumerate(LENGTHS):
            types[row, n // 2 : n] = 1
        batch["token_type_ids"] = types
    return batch


def _pad_id(model) -> int:
    config = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
    return config.pad_token_id or 0


@pytest.mark.parametrize(
    "family, method, checkpointing",
    [(family, method, False) for family in sorted(FAMILIES) for method in ("lora", "full")]
    + [("bert", "lora", True)],
)
def test_packed_batch_gives_the_padded_logits_and_gradients(family, method, checkpointing):
    from tunesmith.models.load import enable_checkpointing

    model = classifier(family, method, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if checkpointing:
        enable_checkpointing(model)
    assert packs(model)
    batch = padded_batch(_pad_id(model))
    model.train()
    results = []
    for forward in (lambda: model(**batch), lambda: packed_forward(model, batch)):
        model.zero_grad()
        logits = forward().logits
        assert logits.shape == (len(LENGTHS), 3)
        (logits * torch.arange(1.0, 4.0)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 4
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_texts_do_not_see_each_other():
    """Changing one text changes its own logits only (a shared row would leak across texts)."""
    model = classifier("bert", "lora").eval()
    batch = padded_batch(0)
    with torch.no_grad():
        before = packed_forward(model, batch).logits
        batch["input_ids"][2, 1:5] = 7
        after = packed_forward(model, batch).logits
    changed = (after - before).abs().amax(dim=1) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_attention_dropout_takes_the_grouped_path_per_text(monkeypatch):
    """In training with attention dropout each text's attention runs through the grouped
    dropout attention, one call per text and layer; with every probability kept it equals the
    padded batch on the same path (the filler text changes nothing)."""
    calls = []
    original = dropout_attention.dropout_attention

    def spy(query, *args):
        calls.append(query.shape[2])
        return original(query, *args)

    monkeypatch.setattr(dropout_attention, "dropout_attention", spy)
    monkeypatch.setattr(dropout_attention, "draw_keep", lambda p, d: torch.ones_like(p, dtype=bool))
    model = classifier("bert", "lora", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1)
    model.train()
    batch = padded_batch(0)
    packed = packed_forward(model, batch).logits
    # two layers, one call per text, and one for the filler text that rounds the row up
    filler = -sum(LENGTHS) % ROW_MULTIPLE
    assert filler and calls == [*LENGTHS, filler] * 2
    padded = model(**batch).logits
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_decoders_virtual_tokens_and_unoptimized_models_stay_padded(tiny_model_dir):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_config(tiny_bert_config())
    assert not packs(plain)  # train.optimize off: the library's attention, no boundaries
    prompt = PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    assert not packs(optimize_for_training(get_peft_model(plain, prompt)))  # per-row prefix
    decoder = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert not packs(optimize_for_training(decoder))
