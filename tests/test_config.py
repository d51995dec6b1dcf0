"""The run configuration: YAML + dotted overrides, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunesmith.config.load import load_config, parse_override, save_config
from tunesmith.config.methods import FreezeMethod, LoraMethod
from tunesmith.config.schema import RunConfig, TrainConfig
from tunesmith.utils.errors import ConfigError, TunesmithError

# The allowed keys listed in an error are the section's fields, in declaration order.
TRAIN_KEYS = ", ".join(TrainConfig.model_fields)
LORA_KEYS = ", ".join(LoraMethod.model_fields)
FREEZE_KEYS = ", ".join(FreezeMethod.model_fields)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.fixture
def config_file(tmp_path) -> Path:
    return write(
        tmp_path / "run.yaml",
        "model:\n"
        "  name_or_path: some/model\n"
        "method:\n"
        "  type: lora\n"
        "  r: 4\n"
        "data:\n"
        "  train: from_file.jsonl\n"
        "train:\n"
        "  epochs: 2\n"
        "  learning_rate: 3.0e-4\n"
        "  batch_size: 2\n",
    )


# --- values and precedence ---------------------------------------------------------------


def test_yaml_file_is_read_with_defaults_for_the_rest(config_file):
    cfg = load_config(config_file)
    assert cfg.model.name_or_path == "some/model"
    assert cfg.method == LoraMethod(r=4)
    assert cfg.data.train == ["from_file.jsonl"]  # one path becomes a list
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.batch_size) == (2.0, 3e-4, 2)
    assert cfg.train.lr_scheduler == "cosine"  # untouched default
    assert cfg.output.dir == "runs"


def test_overrides_take_natural_types():
    cfg = load_config(
        None,
        [
            "train.learning_rate=1e-4",
            "data.train=a.jsonl",
            "data.eval=[a, b]",
            "train.gradient_checkpointing=true",
            "data.train_on_prompt=False",
            "train.epochs=1",
            "train.save_total_limit=null",
            "method.target_modules=[q_proj, v_proj]",
        ],
    )
    assert cfg.train.learning_rate == 1e-4
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.data.train == ["a.jsonl"]
    assert cfg.data.eval == ["a", "b"]
    assert cfg.train.gradient_checkpointing is True
    assert cfg.data.train_on_prompt is False
    assert cfg.train.epochs == 1.0
    assert cfg.train.save_total_limit is None
    assert cfg.method.target_modules == ["q_proj", "v_proj"]


def test_method_without_type_is_lora():
    cfg = load_config(None, ["method.r=16"])
    assert isinstance(cfg.method, LoraMethod)
    assert cfg.method.r == 16
    assert cfg.method.alpha == 16.0  # the rest keeps lora's defaults


def test_method_type_selects_the_variant():
    cfg = load_config(None, ["method.type=freeze", "method.trainable_layers=1"])
    assert cfg.method == FreezeMethod(trainable_layers=1)


def test_overrides_win_over_the_file_and_keep_its_other_values(config_file):
    cfg = load_config(
        config_file, ["train.learning_rate=1e-5", "data.train=[x.jsonl, y.jsonl]", "method.r=8"]
    )
    assert cfg.train.learning_rate == 1e-5
    assert cfg.data.train == ["x.jsonl", "y.jsonl"]
    assert cfg.method.r == 8
    assert cfg.train.epochs == 2.0  # from the file
    assert cfg.model.name_or_path == "some/model"


def test_later_override_wins():
    cfg = load_config(None, ["train.epochs=1", "train.epochs=5"])
    assert cfg.train.epochs == 5.0


def test_text_fields_keep_the_text_yaml_would_turn_into_numbers_dates_or_booleans():
    cfg = load_config(
        None,
        [
            "output.name=2024-06-01",
            "model.revision=0012345",
            "model.name_or_path=yes",
            "data.train=2024",
            "data.columns.output=007",
        ],
    )
    assert cfg.output.name == "2024-06-01"
    assert cfg.model.revision == "0012345"
    assert cfg.model.name_or_path == "yes"
    assert cfg.data.train == ["2024"]
    assert cfg.data.columns == {"output": "007"}
    # ... while null still clears an optional text field
    assert load_config(None, ["output.name=null"]).output.name is None


def test_quoted_override_value_is_unquoted():
    assert load_config(None, ['output.name="my run"']).output.name == "my run"


def test_parse_override_splits_at_the_first_equals_sign():
    assert parse_override("model.chat_template={{ a == b }}") == (
        "model.chat_template",
        "{{ a == b }}",
    )
    # Scalars stay text for pydantic to convert by field type; lists and null come from YAML.
    assert parse_override(" train.epochs = 2") == ("train.epochs", "2")
    assert parse_override("data.train=[a, b]") == ("data.train", ["a", "b"])
    assert parse_override("model.revision=null") == ("model.revision", None)
    assert parse_override("output.name=") == ("output.name", "")


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == RunConfig()


# --- unknown keys ------------------------------------------------------------------------


def test_typo_in_a_nested_key_names_the_path_the_fix_and_the_allowed_keys():
    assert error_of(["train.learnig_rate=1e-4"]) == (
        "overrides: invalid configuration\n"
        "  unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?); "
        f"allowed here: {TRAIN_KEYS}"
    )


def test_typo_in_a_method_key():
    assert error_of(["method.rr=4"]) == (
        "overrides: invalid configuration\n"
        f"  unknown key 'method.rr' (did you mean 'method.r'?); allowed here: {LORA_KEYS}"
    )


def test_typo_in_a_top_level_section():
    assert error_of(["trian.epochs=1"]) == (
        "overrides: invalid configuration\n"
        "  unknown key 'trian' (did you mean 'train'?); "
        "allowed here: model, method, data, train, output, eval, export, serve"
    )


def test_typo_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path / "typo.yaml", "train:\n  learnig_rate: 1.0e-4\n")
    message = error_of([], path)
    assert message.startswith(f"{path}: invalid configuration\n")
    assert "unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?)" in message


def test_unrelated_unknown_key_has_no_suggestion():
    message = error_of(["train.zzz=1"])
    assert message == (
        f"overrides: invalid configuration\n  unknown key 'train.zzz'; allowed here: {TRAIN_KEYS}"
    )


def test_key_of_another_method_is_unknown_for_this_one():
    assert error_of(["method.type=freeze", "method.r=8"]) == (
        f"overrides: invalid configuration\n  unknown key 'method.r'; allowed here: {FREEZE_KEYS}"
    )


# --- bad values --------------------------------------------------------------------------


def test_wrong_type_names_key_and_value():
    assert error_of(["train.epochs=abc"]) == (
        "overrides: invalid configuration\n"
        "  train.epochs: got 'abc': Input should be a valid number, "
        "unable to parse string as a number"
    )


def test_out_of_range_value():
    assert error_of(["train.batch_size=0"]) == (
        "overrides: invalid configuration\n"
        "  train.batch_size: got '0': Input should be greater than or equal to 1"
    )


def test_typo_inside_an_optional_section_lists_its_keys():
    assert error_of(["train.early_stopping.patiense=2"]).endswith(
        "unknown key 'train.early_stopping.patiense' (did you mean "
        "'train.early_stopping.patience'?); allowed here: metric, mode, patience, min_delta"
    )


def test_bad_choice_suggests_the_closest_allowed_value():
    assert error_of(["train.lr_scheduler=cosin"]) == (
        "overrides: invalid configuration\n"
        "  train.lr_scheduler: got 'cosin': Input should be 'linear', 'cosine', 'constant', "
        "'constant_with_warmup' or 'reduce_on_plateau' (did you mean 'cosine'?)"
    )


def test_bad_method_type_suggests_and_lists_the_methods():
    assert error_of(["method.type=lorra"]) == (
        "overrides: invalid configuration\n"
        "  method.type: got 'lorra' (did you mean 'lora'?); allowed: full, freeze, lora, qlora, "
        "ia3, prefix, prompt, ptuning, adapter, hybrid"
    )


def test_value_for_a_section():
    assert error_of(["model=foo"]) == (
        "overrides: invalid configuration\n"
        "  model: got 'foo': Input should be a valid dictionary or instance of ModelConfig"
    )


def test_every_error_is_reported_at_once():
    message = error_of(
        ["train.learnig_rate=1", "train.batch_size=0", "method.type=lorra", "output.overwrite=9"]
    )
    lines = message.splitlines()
    assert lines[0] == "overrides: invalid configuration"
    assert len(lines) == 5
    body = "\n".join(lines[1:])
    assert "unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?)" in body
    assert "train.batch_size: got '0': Input should be greater than or equal to 1" in body
    assert "method.type: got 'lorra' (did you mean 'lora'?)" in body
    assert "output.overwrite: got '9': Input should be a valid boolean" in body


# --- files and override syntax -----------------------------------------------------------


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"
    assert error_of([], path) == f"config file '{path}' not found"


def test_yaml_syntax_error_points_at_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  epochs: 2\n\tbatch_size: 3\n")
    assert error_of([], path) == (
        f"{path}:3: invalid YAML: found character '\\t' that cannot start any token"
    )


def test_top_level_list_is_refused(tmp_path):
    path = write(tmp_path / "list.yaml", "- train\n- model\n")
    assert error_of([], path) == (
        f"{path}: expected a mapping of sections (model, method, data, train, output, eval, "
        "export, serve) at the top level, got a list"
    )


@pytest.mark.parametrize("item", ["train.epochs", "=3", " =3"])
def test_override_without_key_value(item):
    assert error_of([item]) == (f"override '{item}' must look like key=value (e.g. train.epochs=2)")


def test_override_below_a_scalar_field(config_file):
    expected = "override 'train.epochs.x': 'train.epochs' is a value, not a section"
    assert error_of(["train.epochs.x=1"], config_file) == expected  # epochs set in the file
    assert error_of(["train.epochs.x=1"]).endswith(  # epochs left at its default
        "train.epochs: got {'x': '1'}: Input should be a valid number"
    )
    assert error_of(["method.r.deep.er=1"]).endswith(
        "method.r: got {'deep': {'er': '1'}}: Input should be a valid integer"
    )


def test_config_error_is_a_user_error():
    # the CLI prints TunesmithError without a traceback
    assert issubclass(ConfigError, TunesmithError)


# --- one key for "maximum tokens" ---------------------------------------------------------


@pytest.fixture
def fresh_deprecation_notes(monkeypatch):
    """The note is printed once per process: start each test with none printed yet."""
    import tunesmith.config.load as load

    monkeypatch.setattr(load, "_noted", set())


def test_old_cls_max_length_maps_onto_cutoff_len_with_one_note(
    tmp_path, capsys, fresh_deprecation_notes
):
    path = write(tmp_path / "old.yaml", "train:\n  stage: cls\n  cls:\n    max_length: 128\n")
    cfg = load_config(path)
    assert cfg.data.cutoff_len == 128
    err = capsys.readouterr().err
    assert "train.cls.max_length" in err and "data.cutoff_len" in err
    # as an override too, with the note not repeated
    assert load_config(None, ["train.cls.max_length=96"]).data.cutoff_len == 96
    assert capsys.readouterr().err == ""


def test_old_and_new_key_agreeing_is_fine(fresh_deprecation_notes):
    cfg = load_config(None, ["train.cls.max_length=128", "data.cutoff_len=128"])
    assert cfg.data.cutoff_len == 128


def test_old_and_new_key_disagreeing_names_both(tmp_path, fresh_deprecation_notes):
    path = write(tmp_path / "both.yaml", "data:\n  cutoff_len: 512\n")
    msg = error_of(["train.cls.max_length=128"], path)
    assert "train.cls.max_length=128" in msg and "data.cutoff_len=512" in msg
    assert str(path) in msg and "set data.cutoff_len alone" in msg


def test_bad_value_under_the_old_key_names_both_keys(fresh_deprecation_notes):
    msg = error_of(["train.cls.max_length=4"])
    assert "data.cutoff_len: got '4'" in msg and "(given as train.cls.max_length)" in msg


def test_loading_does_not_change_the_callers_mapping(fresh_deprecation_notes):
    from tunesmith.config.load import validate

    data = {"train": {"cls": {"max_length": 64}}}
    assert validate(data).data.cutoff_len == 64
    assert data == {"train": {"cls": {"max_length": 64}}}


def test_forgetting_window_follows_cutoff_len_unless_set():
    general = "train.forgetting_eval={data: [general.txt]}"
    assert (
        load_config(None, [general, "data.cutoff_len=300"]).train.forgetting_eval.max_length == 300
    )
    assert load_config(None, [general]).train.forgetting_eval.max_length == 1024  # the default
    own = load_config(None, [general, "data.cutoff_len=300", "train.forgetting_eval.max_length=64"])
    assert own.train.forgetting_eval.max_length == 64 and own.data.cutoff_len == 300
    assert load_config(None, []).train.forgetting_eval is None


def test_forgetting_window_is_saved_as_the_number_used(tmp_path):
    cfg = load_config(None, ["train.forgetting_eval={data: [g.txt]}", "data.cutoff_len=200"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert "max_length: 200" in (tmp_path / "saved.yaml").read_text(encoding="utf-8")
    assert load_config(tmp_path / "saved.yaml") == cfg


# --- saving ------------------------------------------------------------------------------


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name_or_path=/models/tiny",
            "method.r=4",
            "method.target_modules=[q_proj, v_proj]",
            "data.train=[a.jsonl, b.jsonl]",
            "data.columns.instruction=question",
            "train.learning_rate=1e-5",
            "train.max_steps=10",
            "output.name=2024-06-01",
        ],
    )
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_every_method_round_trips(tmp_path, method):
    cfg = load_config(None, [f"method.type={method}"])
    save_config(cfg, tmp_path / "m.yaml")
    assert load_config(tmp_path / "m.yaml") == cfg


@pytest.mark.parametrize(("stage", "cutoff"), [("cls", 256), ("sft", 1024)])
def test_a_run_saved_before_the_one_length_key_still_loads(tmp_path, stage, cutoff):
    """Older run folders saved train.cls.max_length (its default) beside data.cutoff_len: the
    length a cls run used, nothing for other stages; no conflict error, no note."""
    saved = tmp_path / "config.yaml"
    old = {"train": {"stage": stage, "cls": {"max_length": 256}}, "data": {"cutoff_len": 1024}}
    saved.write_text(yaml.safe_dump(old), encoding="utf-8")
    assert load_config(saved, saved=True).data.cutoff_len == cutoff
    with pytest.raises(ConfigError, match=r"train\.cls\.max_length"):
        load_config(saved)  # a user's own file with both keys disagreeing: said
