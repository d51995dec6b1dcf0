"""The classification stage: data, labels, split, head, loss, training, resume, prediction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import train_run

from tunesmith.config.cls import ClsConfig
from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import load_cls_data, stratified_split
from tunesmith.models.classifier import SeedHead, use_seed_head
from tunesmith.runs.folder import read_jsonl
from tunesmith.train.cls import class_weights, classification_loss, predict_labels
from tunesmith.utils.errors import ConfigError, DataError, ModelError

WORDS = {
    "pos": ["good", "great", "fine", "nice", "happy", "love"],
    "neg": ["bad", "awful", "poor", "sad", "hate", "ugly"],
    "neu": ["table", "chair", "paper", "street", "window", "door"],
}
FILLER = ["the", "a", "is", "was", "it", "this", "very", "so"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


pytestmark = pytest.mark.usefixtures("one_thread")

# fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT encoder (hidden 32, 2 layers) and WordPiece tokenizer saved to a folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = SPECIAL + FILLER + [w for words in WORDS.values() for w in words]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.1,  # a wider init than BERT's 0.02 leaves the flat start sooner
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(WORDS[label], 2) + rng.sample(FILLER, 3)
    rng.shuffle(words)
    return " ".join(words)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _separable(path: Path, n_per_class: int, seed: int, labels=("pos", "neg", "neu")) -> Path:
    rng = random.Random(seed)
    records = []
    for _ in range(n_per_class):
        records += [{"text": _sentence(rng, lab), "label": lab} for lab in labels]
    return _write_jsonl(path, records)


def _config(tmp_path: Path, model: Path | str, train: Path, name: str, **overrides) -> RunConfig:
    train_cfg = {
        "stage": "cls",
        "epochs": 6,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "sampling": "random",  # the tiny sets learn in few steps from this seed's order
        "save_steps": 1000,
        "logging_steps": 5,
        "cls": {},
    }
    data = {"train": [str(train)], "cutoff_len": 16}
    method = {"type": "full"}
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        target = {"train": train_cfg, "data": data, "method": method}[section]
        if field.startswith("cls."):
            target["cls"][field[4:]] = value
        else:
            target[field] = value
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model)},
            "method": method,
            "data": data,
            "train": train_cfg,
            "output": {"dir": str(tmp_path / "runs"), "name": name},
        }
    )


# data -----------------------------------------------------------------------------------------


def test_stratified_split_keeps_class_ratios(tmp_path):
    records = [
        {"text": f"t{i}", "label": lab}
        for lab, n in (("a", 60), ("b", 30), ("c", 10))
        for i in range(n)
    ]
    data = load_cls_data([str(_write_jsonl(tmp_path / "d.jsonl", records))], [], ClsConfig())
    train, val = stratified_split(data.train + data.eval, 0.2, seed=1)
    count = lambda rs, lab: sum(r.labels == (lab,) for r in rs)  # noqa: E731
    assert [count(val, lab) for lab in "abc"] == [12, 6, 2]
    assert [count(train, lab) for lab in "abc"] == [48, 24, 8]
    assert {r.line for r in train}.isdisjoint({r.line for r in val})
    again, _ = stratified_split(data.train + data.eval, 0.2, seed=1)
    assert [r.line for r in again] == [r.line for r in train]  # seeded: reproducible
    # the default val_fraction 0.1 held out inside load_cls_data, stratified the same way
    assert data.stats["eval"] == 10 and data.stats["labels"] == {"a": 54, "b": 27, "c": 9}


def test_single_member_class_stays_in_training(tmp_path):
    records = [{"text": "x", "label": "a"}] * 9 + [{"text": "y", "label": "b"}]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    data = load_cls_data([str(path)], [], ClsConfig(val_fraction=0.5))
    assert data.stats["labels"] == {"a": 5, "b": 1} and len(data.eval) == 4


def test_label_ids_and_names(tmp_path):
    records = [
        {"text": "one", "label": 0},
        {"text": "two", "label": "1"},  # csv-style id
        {"text": "three", "label": "pos"},
        {"text": "four", "label": 1.0},  # a parquet float column
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    cfg = ClsConfig(labels=["neg", "pos"], val_fraction=0)
    data = load_cls_data([str(path)], [], cfg)
    assert data.labels == ["neg", "pos"]
    assert [r.labels for r in data.train] == [("neg",), ("pos",), ("pos",), ("pos",)]

    # no label list: the labels are the data's, integer ids sorted as numbers
    numbers = [{"text": f"t{n}", "label": n} for n in (10, 2, 1, 2)]
    path = _write_jsonl(tmp_path / "n.jsonl", numbers)
    assert load_cls_data([str(path)], [], ClsConfig(val_fraction=0)).labels == ["1", "2", "10"]


def test_unknown_eval_label_is_an_error_with_its_line(tmp_path):
    train = _separable(tmp_path / "train.jsonl", 3, seed=0, labels=("pos", "neg"))
    evals = _write_jsonl(
        tmp_path / "eval.jsonl", [{"text": "good", "label": "pos"}, {"text": "x", "label": "meh"}]
    )
    with pytest.raises(DataError, match=r"eval\.jsonl:2: unknown label 'meh'; the labels are neg"):
        load_cls_data([str(train)], [str(evals)], ClsConfig(), on_error="skip", reject=print)


def test_bad_eval_records_follow_on_error(tmp_path):
    train = _separable(tmp_path / "train.jsonl", 3, seed=0, labels=("pos", "neg"))
    evals = _write_jsonl(
        tmp_path / "eval.jsonl", [{"text": "good", "label": "pos"}, {"label": "neg"}]
    )
    rejects: list[tuple] = []
    data = load_cls_data(
        [str(train)],
        [str(evals)],
        ClsConfig(),
        on_error="skip",
        reject=lambda *a: rejects.append(a),
    )
    assert [(Path(r[0]).name, r[1]) for r in rejects] == [("eval.jsonl", 2)]
    assert data.stats["read"] == 8 and data.stats["rejected"] == 1 and data.stats["kept"] == 7
    assert data.stats["train"] == 6 and data.stats["eval"] == 1


def test_bad_records_rejected_with_reasons(tmp_path):
    records = [
        {"text": "good fine", "label": "pos"},
        {"label": "pos"},
        {"text": "   ", "label": "neg"},
        {"text": "bad sad"},
        {"text": 5, "label": "neg"},
        {"text": "poor", "label": {"x": 1}},
        {"text": "awful", "label": "maybe"},
        {"text": "bad", "label": "neg"},
        {"text": "nice", "label": 0.5},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    rejects: list[tuple] = []
    cfg = ClsConfig(labels=["neg", "pos"], val_fraction=0)
    data = load_cls_data([str(path)], [], cfg, on_error="skip", reject=lambda *a: rejects.append(a))
    stats = data.stats
    assert stats["read"] == 9 and stats["kept"] == 2 and stats["rejected"] == 7
    assert stats["read"] == stats["kept"] + stats["rejected"]
    reasons = {line: reason for _, line, reason, _ in rejects}
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 9}
    assert "missing text column 'text'" in reasons[2]
    assert "'text' is empty" in reasons[3]
    assert "missing label column 'label'" in reasons[4]
    assert "must be text, got int" in reasons[5]
    assert "a label is a name or an integer id" in reasons[6]
    assert "unknown label 'maybe'" in reasons[7]
    assert "got 0.5" in reasons[9]
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing text column 'text'"):
        load_cls_data([str(path)], [], cfg, on_error="stop")


def test_multi_label_parsing(tmp_path):
    records = [
        {"text": "a", "tags": ["x", "y"]},
        {"text": "b", "tags": "y; z"},
        {"text": "c", "tags": []},  # no label applies
        {"text": "d", "tags": "z"},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    cfg = ClsConfig(label_column="tags", multi_label=True, label_delimiter=";", val_fraction=0)
    data = load_cls_data([str(path)], [], cfg)
    assert data.labels == ["x", "y", "z"]
    assert [r.labels for r in data.train] == [("x", "y"), ("y", "z"), (), ("z",)]
    assert data.stats["labels"] == {"x": 1, "y": 2, "z": 2}


def test_csv_with_text_pairs(tmp_path, bert_dir):
    from transformers import AutoTokenizer

    from tunesmith.data.classification import tokenize_cls

    path = tmp_path / "pairs.csv"
    path.write_text("premise,hypothesis,label\ngood fine,great,1\nbad,good,0\n", encoding="utf-8")
    cfg = ClsConfig(text_column="premise", text_pair_column="hypothesis", val_fraction=0)
    data = load_cls_data([str(path)], [], cfg)
    assert data.train[0].pair == "great" and data.labels == ["0", "1"]
    encoding = tokenize_cls(
        data.train, data.labels, AutoTokenizer.from_pretrained(bert_dir), cfg, cutoff_len=256
    )
    examples = encoding.examples
    # [CLS] good fine [SEP] great [SEP]: the pair is segment 1
    assert examples[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert [e["labels"] for e in examples] == [1, 0] and encoding.truncated == 0


def test_texts_are_cut_to_cutoff_len_capped_at_the_models_limit(bert_dir):
    from transformers import AutoTokenizer

    from tunesmith.data.classification import ClsRecord, cls_max_length, tokenize_cls

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    tokenizer.model_max_length = 12  # an encoder's position table
    records = [
        ClsRecord("good " * 30, None, ("1",), "t.csv", 2),
        ClsRecord("bad", None, ("0",), "t.csv", 3),
    ]
    head = ClsConfig(long_text="head")
    encoding = tokenize_cls(records, ["0", "1"], tokenizer, head, cutoff_len=8)
    assert len(encoding.examples[0]["input_ids"]) == 8 and encoding.truncated == 1
    assert cls_max_length(tokenizer, 1024) == 12
    encoding = tokenize_cls(records, ["0", "1"], tokenizer, head, cutoff_len=1024)
    assert len(encoding.examples[0]["input_ids"]) == 12


# long texts -----------------------------------------------------------------------------------


def _tokenizer(bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bert_dir)


def _ids(tokenizer, words: str) -> list[int]:
    return tokenizer(words, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([10] * 95 + [40] * 5, "head"),  # 5% too long: their ends are lost, little else
        ([10] * 70 + [40] * 30, "head_tail"),  # 30% too long, 24% of the tokens cut
        ([10] * 20 + [200] * 80, "chunk"),  # most of every long text would be cut
    ],
)
def test_auto_long_text_follows_the_length_distribution(lengths, expected):
    from tunesmith.data.classification import choose_long_text

    strategy, why = choose_long_text(lengths, 14, ClsConfig())
    assert strategy == expected and "longer than 14 tokens" in why
    assert choose_long_text(lengths, 14, ClsConfig(long_text="head"))[0] == "head"
    pairs = ClsConfig(text_pair_column="hypothesis")
    assert choose_long_text(lengths, 14, pairs)[0] == "head"


def test_head_tail_keeps_the_start_and_the_end(bert_dir):
    from tunesmith.data.classification import ClsRecord, tokenize_cls

    tokenizer = _tokenizer(bert_dir)
    text = "good great " + "the a " * 30 + "bad awful poor sad"
    cfg = ClsConfig(long_text="head_tail", head_share=0.25)
    record = ClsRecord(text, None, ("1",), "t.jsonl", 1)
    encoding = tokenize_cls([record], ["0", "1"], tokenizer, cfg, cutoff_len=10)
    ids = encoding.examples[0]["input_ids"]
    # 8 tokens of budget between [CLS] and [SEP]: the first 2, the last 6
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert ids[1:3] == _ids(tokenizer, "good great")
    assert ids[3:-1] == _ids(tokenizer, "the a bad awful poor sad")
    assert encoding.truncated == 1 and encoding.strategy == "head_tail"


def test_chunks_overlap_spread_and_pool_per_text(bert_dir):
    from tunesmith.data.classification import ClsRecord, tokenize_cls

    tokenizer = _tokenizer(bert_dir)
    words = [FILLER[i % len(FILLER)] for i in range(40)]
    records = [
        ClsRecord(" ".join(words), None, ("1",), "t.jsonl", 1),
        ClsRecord("good", None, ("0",), "t.jsonl", 2),
    ]
    cfg = ClsConfig(long_text="chunk", chunk_overlap=2, max_chunks=3)
    encoding = tokenize_cls(records, ["0", "1"], tokenizer, cfg, cutoff_len=10)
    # 40 tokens in windows of 8 that step by 6: 7 windows, of which 3 are kept (first, middle,
    # last); the short text is one window
    assert encoding.docs == [0, 0, 0, 1]
    first, middle, last = (e["input_ids"][1:-1] for e in encoding.examples[:3])
    everything = _ids(tokenizer, " ".join(words))
    assert first == everything[:8] and last[-1] == everything[-1]
    assert middle == everything[18:26]
    assert [e["labels"] for e in encoding.examples] == [1, 1, 1, 0]
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [0.0, 2.0]]).numpy()
    assert encoding.pool(logits).tolist() == [[3.0, 0.0], [0.0, 2.0]]


def _signal_at_the_end(path: Path, n_per_class: int, seed: int) -> Path:
    """Three label words after 20 filler words: only a strategy that reads the end of a text
    can learn the label."""
    rng = random.Random(seed)
    records = []
    for _ in range(n_per_class):
        for label in ("pos", "neg"):
            filler = " ".join(rng.choice(FILLER) for _ in range(20))
            words = " ".join(rng.sample(WORDS[label], 3))
            records.append({"text": f"{filler} {words}", "label": label})
    return _write_jsonl(path, records)


@pytest.mark.parametrize(("long_text", "learns"), [("head", False), ("auto", True)])
def test_a_label_at_the_end_is_learnt_only_when_the_end_is_read(
    tmp_path, bert_dir, long_text, learns
):
    train = _signal_at_the_end(tmp_path / "train.jsonl", 24, seed=0)
    evals = _signal_at_the_end(tmp_path / "eval.jsonl", 10, seed=1)
    config = _config(
        tmp_path,
        bert_dir,
        train,
        f"end-{long_text}",
        **{"data.eval": [str(evals)], "train.cls.long_text": long_text, "train.epochs": 8},
    )
    result = train_run(config)
    long = result.summary["data"]["long_text"]
    assert long["truncated"] == 48
    # auto: every text is too long but loses under half its tokens, so head_tail; the
    # choice is written into the run's config, and prediction cuts texts the same way
    assert long["strategy"] == ("head" if long_text == "head" else "head_tail")
    saved = RunConfig.model_validate(
        __import__("yaml").safe_load(result.run.config_path.read_text())
    )
    assert saved.train.cls.long_text == long["strategy"]
    assert (result.summary["eval"]["accuracy"] >= 0.9) is learns
    texts = [json.loads(line)["text"] for line in evals.read_text().splitlines()[:6]]
    predicted = predict_labels(result.run.root, texts)
    assert (predicted == ["pos", "neg"] * 3) is learns


# loss and head --------------------------------------------------------------------------------


def test_weighted_cross_entropy_is_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([1.0, 3.0])
    ce = [-torch.log_softmax(logits[i], -1)[labels[i]] for i in range(3)]
    expected = (1 * ce[0] + 3 * ce[1] + 3 * ce[2]) / (1 + 3 + 3)
    got = classification_loss(logits, labels, weights)
    assert torch.isclose(got, expected)
    assert not torch.isclose(got, classification_loss(logits, labels))  # the weights matter


def test_multi_label_bce_with_pos_weight_is_hand_computed():
    logits = torch.tensor([[0.5, -1.0]])
    labels = torch.tensor([[1.0, 0.0]])
    pos_weight = torch.tensor([4.0, 2.0])
    sig = torch.sigmoid(logits)[0]
    expected = (-4.0 * torch.log(sig[0]) - torch.log(1 - sig[1])) / 2
    assert torch.isclose(
        classification_loss(logits, labels, pos_weight, multi_label=True), expected
    )


def test_balanced_and_explicit_class_weights(tmp_path):
    records = [{"text": "t", "label": "a"}] * 6 + [{"text": "t", "label": "b"}] * 2
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    data = load_cls_data([str(path)], [], ClsConfig(val_fraction=0))
    balanced = class_weights(data, ClsConfig(class_weights="balanced"))
    assert torch.allclose(balanced, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
    explicit = class_weights(data, ClsConfig(class_weights={"b": 5.0}))
    assert explicit.tolist() == [1.0, 5.0]
    with pytest.raises(ConfigError, match="unknown label c"):
        class_weights(data, ClsConfig(class_weights={"c": 2.0}))
    multi = load_cls_data(
        [
            str(
                _write_jsonl(
                    tmp_path / "m.jsonl",
                    [{"text": "t", "label": ["a"]}] * 3 + [{"text": "t", "label": ["a", "b"]}],
                )
            )
        ],
        [],
        ClsConfig(multi_label=True, val_fraction=0),
    )
    # pos_weight = negatives / positives: a is in 4 of 4, b in 1 of 4
    cfg = ClsConfig(multi_label=True, class_weights="balanced")
    assert class_weights(multi, cfg).tolist() == [0.0, 3.0]


def test_seed_head_shape_and_forward_on_bert_and_llama(bert_dir, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    head = use_seed_head(bert, dropout=0.1)
    assert bert.classifier is head and isinstance(head, SeedHead)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert (head[1].in_features, head[1].out_features) == (32, 16)
    assert (head[4].in_features, head[4].out_features) == (16, 3)
    bert.eval()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = (ids != 0).long()
    logits = bert(input_ids=ids, attention_mask=mask).logits
    pooled = bert.bert(input_ids=ids, attention_mask=mask).pooler_output
    assert logits.shape == (2, 3) and torch.allclose(logits, head(pooled), atol=1e-6)

    llama = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    llama.config.pad_token_id = 0
    use_seed_head(llama, dropout=0.0)
    llama.eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    hidden = llama.model(input_ids=ids).last_hidden_state
    logits = llama(input_ids=ids).logits
    assert logits.shape == (1, 2)
    assert torch.allclose(logits[0], llama.score(hidden[0, 2]), atol=1e-5)  # last real token


# training -------------------------------------------------------------------------------------


def test_tiny_bert_learns_separable_set(tmp_path, bert_dir):
    train = _separable(tmp_path / "train.jsonl", 16, seed=0)
    evals = _separable(tmp_path / "eval.jsonl", 10, seed=1)
    config = _config(
        tmp_path, bert_dir, train, "sep", **{"data.eval": [str(evals)], "train.save_steps": 12}
    )
    result = train_run(config)
    summary = result.summary
    assert summary["eval"]["accuracy"] >= 0.95 and summary["eval"]["f1_macro"] >= 0.95
    assert summary["labels"] == ["neg", "neu", "pos"]
    report = json.loads((result.run.reports / "classification.json").read_text())
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == 30 and [sum(row) for row in matrix] == [10, 10, 10]
    assert (result.run.reports / "confusion_matrix.png").stat().st_size > 0
    # evaluation ran at every save with the classification metrics
    evals_logged = [m for m in read_jsonl(result.run.metrics_path) if "eval_f1_macro" in m]
    assert [m["step"] for m in evals_logged] == [12, 24, 36]
    predicted = predict_labels(result.run.root, ["good great the it", "sad hate it was"])
    assert predicted == ["pos", "neg"]


def test_seed_head_with_lora_and_class_weights_trains_and_predicts(tmp_path, bert_dir, capfd):
    rng = random.Random(2)
    records = [{"text": _sentence(rng, "pos"), "label": "pos"} for _ in range(32)]
    records += [{"text": _sentence(rng, "neg"), "label": "neg"} for _ in range(16)]
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(
        tmp_path,
        bert_dir,
        train,
        "seed-lora",
        **{
            "method.type": "lora",
            "method.r": 4,
            "train.cls.head": "seed",
            "train.cls.class_weights": "balanced",
            "train.cls.val_fraction": 0.25,
            "train.learning_rate": 1e-2,
            "train.epochs": 10,
        },
    )
    result = train_run(config)
    # held out: 8 pos, 4 neg; balanced weights n / (classes x count) over 24 pos, 12 neg
    assert result.artifact.name == "adapter" and result.summary["labels"] == ["neg", "pos"]
    assert result.summary["class_weights"] == [36 / (2 * 12), 36 / (2 * 24)]
    assert result.summary["data"]["eval_source"] == "split" and result.summary["data"]["eval"] == 12
    # 10 of 12 or better (the majority class alone gets 8): 12 texts move in steps of 0.083,
    # and the dropout draws' order moves a run by one text (seeds 0-5 average 0.89 either way)
    assert result.summary["eval"]["accuracy"] >= 0.8
    texts = ["good love the", "ugly poor so", "nice happy a", "hate bad it"]
    capfd.readouterr()
    assert predict_labels(result.run.root, texts) == ["pos", "neg", "pos", "neg"]
    # the head comes from the run: no load report calling it missing and newly initialized
    printed = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in printed and "MISSING" not in printed


def test_multi_label_training_and_prediction(tmp_path, bert_dir):
    rng = random.Random(3)
    records = []
    for _ in range(30):
        tags = [t for t in ("pos", "neu") if rng.random() < 0.5] or ["neg"]
        words = [w for t in tags for w in rng.sample(WORDS[t], 2)] + rng.sample(FILLER, 2)
        records.append({"text": " ".join(words), "label": ",".join(tags)})
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(
        tmp_path,
        bert_dir,
        train,
        "multi",
        **{"train.cls.multi_label": True, "train.epochs": 8, "train.learning_rate": 5e-3},
    )
    result = train_run(config)
    report = json.loads((result.run.reports / "classification.json").read_text())
    assert report["multi_label"] and len(report["confusion_matrix"]) == 3  # one 2x2 per label
    assert result.summary["eval"]["f1_macro"] >= 0.8
    predicted = predict_labels(result.run.root, ["good love table chair", "bad awful it"])
    assert predicted == [["neu", "pos"], ["neg"]]


def test_rejects_file_counts_every_record(tmp_path, bert_dir):
    records = [{"text": "good fine", "label": "pos"}, {"text": "bad sad", "label": "neg"}] * 4
    records.insert(3, {"label": "pos"})
    records.insert(5, {"text": "poor", "label": ""})
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(
        tmp_path, bert_dir, train, "rej", **{"data.on_error": "skip", "train.max_steps": 1}
    )
    result = train_run(config)
    rejects = read_jsonl(result.run.rejects_path)
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (4, "missing text column 'text' (columns: label)"),
        (6, "column 'label' is empty"),
    ]
    stats = result.summary["data"]
    assert stats["read"] == 10 == stats["kept"] + stats["rejected"]


def test_resume_equals_uninterrupted(tmp_path, bert_dir):
    from safetensors.torch import load_file

    train = _separable(tmp_path / "train.jsonl", 8, seed=4)
    common = {"method.type": "lora", "method.r": 4, "train.batch_size": 4, "train.save_steps": 2}
    straight = train_run(
        _config(tmp_path, bert_dir, train, "straight", **common, **{"train.max_steps": 4})
    )
    train_run(_config(tmp_path, bert_dir, train, "resumed", **common, **{"train.max_steps": 2}))
    resumed = train_run(
        _config(tmp_path, bert_dir, train, "resumed", **common, **{"train.max_steps": 4}),
        resume=True,
    )
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    assert resumed.summary["steps"] == 4
    a = load_file(straight.artifact / "adapter_model.safetensors")
    b = load_file(resumed.artifact / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("classifier" in k for k in a)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    losses = lambda r: [m["loss"] for m in read_jsonl(r.run.metrics_path) if "loss" in m]  # noqa: E731
    assert losses(straight) == pytest.approx(losses(resumed), abs=1e-6)


def test_training_runs_padding_free_batches_under_train_optimize(
    tmp_path, bert_dir, monkeypatch, capfd
):
    import tunesmith.train.cls as stage

    texts_per_call = []
    original = stage.packed_forward

    def spy(model, inputs, inner=None):
        texts_per_call.append(len(inputs["input_ids"]))
        return original(model, inputs, inner)

    monkeypatch.setattr(stage, "packed_forward", spy)
    train = _separable(tmp_path / "train.jsonl", 8, seed=4)
    common = {"train.batch_size": 4, "train.max_steps": 2}
    train_run(_config(tmp_path, bert_dir, train, "packed", **common))
    assert "batches: padding-free" in capfd.readouterr().out
    assert texts_per_call[:2] == [4, 4]  # the two training steps, then the held-out report
    texts_per_call.clear()
    train_run(_config(tmp_path, bert_dir, train, "padded", **common, **{"train.optimize": False}))
    assert texts_per_call == [] and "padding-free" not in capfd.readouterr().out


def test_decoder_classifier_on_tiny_llama(tmp_path, tiny_model_dir, matrix_cell):
    matrix_cell("full", "trains", "yes", stage="cls")  # the stage reloads and predicts
    rng = random.Random(5)
    records = [
        {"text": f"{rng.choice(['hello who', 'are you'])} {i}", "label": "ab"[i % 2]}
        for i in range(12)
    ]
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(tmp_path, tiny_model_dir, train, "llama", **{"train.max_steps": 2})
    result = train_run(config)
    saved = json.loads((result.artifact / "config.json").read_text())
    assert saved["pad_token_id"] is not None and saved["id2label"] == {"0": "a", "1": "b"}
    assert all(p in ("a", "b") for p in predict_labels(result.run.root, ["hello", "you are"]))


def test_config_errors(tmp_path, bert_dir):
    with pytest.raises(ValueError, match="labels listed more than once: a"):
        ClsConfig(labels=["a", "b", "a"])
    with pytest.raises(ValueError, match="must be > 0"):
        ClsConfig(class_weights={"a": 0})
    train = _separable(tmp_path / "train.jsonl", 3, seed=0)
    config = _config(
        tmp_path,
        bert_dir,
        train,
        "es",
        **{
            "train.early_stopping": {"metric": "f1_macro"},
            "train.cls.val_fraction": 0,
        },
    )
    with pytest.raises(ConfigError, match="early_stopping needs eval data"):
        train_run(config)


@pytest.mark.slow
def test_minilm_learns_tiny_sentiment_set(tmp_path):
    pos = [
        "I love this movie",
        "What a great film",
        "Wonderful acting and a happy ending",
        "The best show I have seen",
        "Fantastic, I enjoyed it",
        "A delightful story",
    ]
    neg = [
        "I hate this movie",
        "What a terrible film",
        "Awful acting and a sad mess",
        "The worst show I have seen",
        "Boring, I disliked it",
        "A dreadful story",
    ]
    records = [{"text": t, "label": "positive"} for t in pos]
    records += [{"text": t, "label": "negative"} for t in neg]
    train = _write_jsonl(tmp_path / "train.jsonl", records * 2)
    evals = _write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"text": "A great and happy film", "label": "positive"},
            {"text": "I loved it, wonderful", "label": "positive"},
            {"text": "A terrible and boring film", "label": "negative"},
            {"text": "I hated it, awful", "label": "negative"},
        ],
    )
    config = _config(
        tmp_path,
        "minilm-l6",
        train,
        "minilm",
        **{"data.eval": [str(evals)], "train.max_steps": 12, "train.learning_rate": 1e-4},
    )
    result = train_run(config)
    assert result.summary["eval"]["accuracy"] > 0.5  # above chance for two balanced classes


def test_early_stopping_on_validation_f1(tmp_path, bert_dir):
    train = _separable(tmp_path / "train.jsonl", 10, seed=6)
    stopping = {"metric": "f1_macro", "mode": "max", "patience": 1}
    config = _config(
        tmp_path,
        bert_dir,
        train,
        "stop",
        **{
            "train.early_stopping": stopping,
            "train.learning_rate": 1e-9,  # nothing improves: stop after the second evaluation
            "train.max_steps": 40,
            "train.save_steps": 2,
            "train.cls.val_fraction": 0.3,
        },
    )
    result = train_run(config)
    assert result.summary["steps"] == 4
    best = result.summary["best"]
    assert best["metric"] == "eval_f1_macro" and best["step"] == 2
    assert best["value"] == result.summary["eval"]["f1_macro"]  # the best checkpoint was kept


def test_multi_label_scores_are_hand_computed():
    import numpy as np

    from tunesmith.train.cls import evaluation_report

    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    y_pred = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    report = evaluation_report(y_true, y_pred, ["a", "b", "c"])
    assert report["accuracy"] == 0.5  # rows 2 and 4 match exactly
    # F1: a 1, b and c 2/3 (precision 1, recall 1/2)
    assert report["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert report["per_class"]["b"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report["confusion_matrix"][1] == [[2, 0], [1, 1]]  # b: [[tn, fp], [fn, tp]]


def test_prefix_tuning_is_refused_by_name_where_the_classifier_takes_no_past_key_values(
    tmp_path, bert_dir, matrix_cell
):
    matrix_cell("prefix", "trains", "no: BERT takes no past_key_values", "cls", "BERT encoder")
    # transformers 5's BERT calls its cache argument `cache`; PEFT's classifier passes the prefix
    # as past_key_values and would raise a bare ValueError at the first forward
    train = _separable(tmp_path / "train.jsonl", 4, seed=7)
    data = _config(tmp_path, bert_dir, train, "prefix").model_dump()
    data["method"] = {"type": "prefix"}
    with pytest.raises(ModelError, match=r"method prefix: .*BertForSequenceClassification.*prompt"):
        train_run(RunConfig.model_validate(data))


def test_the_prefix_check_accepts_a_classifier_that_takes_past_key_values():
    from tunesmith.models.methods.prefix import check_classifier_takes_prefix

    class Classifier(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    class NoPrefix(torch.nn.Module):  # the same classifier without the argument
        def forward(self, input_ids=None, cache=None):
            return input_ids

    assert check_classifier_takes_prefix(Classifier()) is None  # PEFT can hand it the prefix
    # the acceptance comes from the argument: the twin without it is refused
    with pytest.raises(ModelError, match=r"method prefix: .*NoPrefix takes none"):
        check_classifier_takes_prefix(NoPrefix())


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ({"type": "full"}, "seed"),  # the seed head is loaded back into a whole model
        ({"type": "freeze", "trainable_layers": 1}, "standard"),
        ({"type": "ia3"}, "standard"),
        ({"type": "adapter"}, "seed"),
        ({"type": "hybrid"}, "standard"),
        # prefix is refused on BERT: see the test above
        ({"type": "prompt"}, "standard"),
    ],
    ids=lambda value: value["type"] if isinstance(value, dict) else value,
)
def test_every_method_trains_and_reloads_the_classifier(
    tmp_path, bert_dir, method, head, monkeypatch, matrix_cell
):
    import tunesmith.train.cls as stage

    matrix_cell(method["type"], "trains", "yes", stage="cls", kind="BERT encoder")

    final_logits = {}
    report = stage._final_report

    def spy(trainer, sources, *args):  # the trained model's logits on the held-out records
        held_out = sources.held_out
        logits = held_out.pool(trainer.predict(held_out.examples).predictions)
        final_logits["eval"] = torch.tensor(logits, dtype=torch.float32)
        return report(trainer, sources, *args)

    monkeypatch.setattr(stage, "_final_report", spy)
    train = _separable(tmp_path / "train.jsonl", 8, seed=7)
    data = _config(tmp_path, bert_dir, train, method["type"], **{"train.max_steps": 3}).model_dump()
    data["method"] = method
    data["train"]["cls"]["head"] = head
    config = RunConfig.model_validate(data)
    result = train_run(config)
    if method["type"] != "full":
        assert result.summary["trainable_parameters"] < result.summary["total_parameters"]
    held_out = load_cls_data([str(train)], [], config.train.cls, seed=config.train.seed).eval
    model, tokenizer, _, _ = stage.load_trained_classifier(result.run.root)
    batch = tokenizer([r.text for r in held_out], padding=True, return_tensors="pt")
    with torch.no_grad():
        reloaded = model(**batch).logits
    # the saved artifact (method weights and the trained head) reproduces the trained model
    assert torch.allclose(reloaded, final_logits["eval"], atol=1e-5)


def test_auto_chunks_long_texts_trains_on_windows_and_predicts_per_text(tmp_path, bert_dir):
    rng = random.Random(3)

    def long_text(label: str) -> str:  # a label word in every stretch of six words
        stretches = [[*rng.sample(FILLER, 5), rng.choice(WORDS[label])] for _ in range(8)]
        return " ".join(word for stretch in stretches for word in stretch)

    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": long_text(lab), "label": lab} for _ in range(16) for lab in ("pos", "neg")],
    )
    evals = _write_jsonl(
        tmp_path / "eval.jsonl",
        [{"text": long_text(lab), "label": lab} for _ in range(5) for lab in ("pos", "neg")],
    )
    # the stage's default sampling: batches grouped by length, evaluation in record order
    overrides = {"data.eval": [str(evals)], "train.learning_rate": 1e-3, "train.sampling": "auto"}
    config = _config(tmp_path, bert_dir, train, "chunk", **overrides)
    result = train_run(config)
    data = result.summary["data"]
    # 48 tokens against a budget of 14: 71% of every text would be cut, so each is read in
    # overlapping windows, and evaluation scores texts (10), not windows
    assert data["long_text"]["strategy"] == "chunk"
    assert data["examples"] > data["train"] == 32
    report = json.loads((result.run.reports / "classification.json").read_text())
    assert report["n"] == 10 and result.summary["eval"]["accuracy"] >= 0.9
    texts = [json.loads(line)["text"] for line in evals.read_text().splitlines()]
    assert predict_labels(result.run.root, texts) == ["pos", "neg"] * 5


# tunesmith eval of a classification run --------------------------------------------------------


def test_tunesmith_eval_scores_a_classification_run_on_a_test_file(tmp_path, bert_dir):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    train = _separable(tmp_path / "train.jsonl", 16, seed=0)
    test = _separable(tmp_path / "test.jsonl", 6, seed=5)
    good = train_run(_config(tmp_path, bert_dir, train, "good")).run.root
    weak = train_run(_config(tmp_path, bert_dir, train, "weak", **{"train.max_steps": 1})).run.root

    args = ["eval", str(good), f"eval.data=[{test}]", f"eval.baseline={weak}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((good / "eval.json").read_text())
    assert report["eval"]["tasks"] == ["classification"]  # the default tasks, read for a classifier
    texts = [json.loads(line) for line in test.read_text().splitlines()]
    for role, run in (("model", good), ("baseline", weak)):
        expected = predict_labels(run, [t["text"] for t in texts])
        outcome = report["results"][role]
        assert outcome["predictions"] == expected
        correct = [float(p == t["label"]) for p, t in zip(expected, texts, strict=True)]
        assert outcome["scores"]["label_correct"] == correct
        scores = outcome["tasks"]["classification"]
        assert scores["accuracy"] == pytest.approx(sum(correct) / len(correct))
        assert sum(map(sum, scores["confusion_matrix"])) == 18
    assert report["results"]["model"]["tasks"]["classification"]["accuracy"] >= 0.9
    assert report["compare"]["label_correct"]["n"] == 18
    assert (good / "reports/eval.html").is_file()


def test_tunesmith_eval_of_a_classifier_refuses_what_does_not_apply(tmp_path, bert_dir):
    from tunesmith.config.load import load_config
    from tunesmith.evaluation.runner import run_eval

    train = _separable(tmp_path / "train.jsonl", 8, seed=0)
    run = train_run(_config(tmp_path, bert_dir, train, "c", **{"train.max_steps": 1})).run.root
    saved = run / "config.yaml"
    test = _write_jsonl(
        tmp_path / "t.jsonl", [{"text": "good", "label": "pos"}, {"text": "x", "label": "maybe"}]
    )
    with pytest.raises(DataError, match=r"t\.jsonl:2.*maybe"):
        run_eval(load_config(saved, [f"eval.data=[{test}]"], saved=True), run)
    with pytest.raises(ConfigError, match=r"eval\.tasks: .*only 'classification' applies"):
        overrides = [f"eval.data=[{train}]", "eval.tasks=[generation]"]
        run_eval(load_config(saved, overrides, saved=True), run)
    with pytest.raises(ConfigError, match=r"eval\.baseline: .* is not a classification run"):
        overrides = [f"eval.data=[{train}]", f"eval.baseline={bert_dir}"]
        run_eval(load_config(saved, overrides, saved=True), run)


def test_a_tokenizer_without_a_limit_is_cut_to_the_encoders_position_table(tmp_path, bert_dir):
    from tunesmith.models.classifier import load_classifier

    config = _config(tmp_path, bert_dir, tmp_path / "unused.jsonl", "x")
    _, tokenizer, _ = load_classifier(config.model, ["a", "b"], ClsConfig())
    assert tokenizer.model_max_length == 64  # the tiny BERT's table; its tokenizer sets none
    long_texts = [{"text": " ".join(FILLER * 20), "label": lab} for lab in ("pos", "neg") * 4]
    train = _write_jsonl(tmp_path / "long.jsonl", long_texts)
    overrides = {"data.cutoff_len": 4096, "train.max_steps": 1, "train.cls.long_text": "head"}
    result = train_run(_config(tmp_path, bert_dir, train, "long", **overrides))
    assert result.summary["data"]["long_text"]["truncated"] == 8


# train.sampling auto ------------------------------------------------------------------------


def test_batch_sampling_groups_lengths_only_where_the_label_does_not_set_them():
    from tunesmith.data.classification import batch_sampling, label_length_share

    rng = random.Random(0)
    # lengths drawn alike for both labels: grouping by length mixes labels in every batch
    mixed = [{"input_ids": [0] * rng.randint(5, 60), "labels": i % 2} for i in range(200)]
    assert (
        label_length_share([len(e["input_ids"]) for e in mixed], [str(i % 2) for i in range(200)])
        < 0.05
    )
    assert batch_sampling(mixed)[0] == "group_by_length"
    # one label short, the other long (as news vs encyclopedia texts): random batches
    split = [
        {"input_ids": [0] * (rng.randint(5, 20) + 40 * (i % 2)), "labels": i % 2}
        for i in range(200)
    ]
    sampler, why = batch_sampling(split)
    assert sampler == "random" and "one label each" in why
    assert label_length_share([10, 10, 50, 50], ["a", "a", "b", "b"]) == 1.0
    assert label_length_share([7, 7, 7], ["a", "b", "c"]) == 0.0


def test_auto_sampling_is_settled_on_the_data_and_kept_in_the_run(tmp_path, bert_dir):
    rng = random.Random(3)
    records = [{"text": _sentence(rng, "pos"), "label": "pos"} for _ in range(12)]
    # the negative texts run three times as long: the label sets the length
    records += [
        {"text": " ".join(_sentence(rng, "neg") for _ in range(3)), "label": "neg"}
        for _ in range(12)
    ]
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(
        tmp_path, bert_dir, train, "auto", **{"train.sampling": "auto", "train.epochs": 1}
    )
    result = train_run(config)
    sampling = result.summary["data"]["sampling"]
    assert sampling["sampler"] == "random" and "length variance" in sampling["why"]
    saved = RunConfig.model_validate(
        __import__("yaml").safe_load((result.run.root / "config.yaml").read_text())
    )
    assert saved.train.sampling == "random"  # a resumed run and `plan` read the settled value
