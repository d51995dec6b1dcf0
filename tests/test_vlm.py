"""Vision-language fine-tuning (train.stage sft on an image-text-to-text model): data, masking,
training, resume, save / load / merge, on two architectures built in-process (vlm_helpers)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, shared_file
from helpers import run_config, step_losses, train_run
from vlm_helpers import ARCHITECTURES, BUILDERS, write_colour_data, write_images

from tunesmith.config.schema import DataConfig
from tunesmith.data.multimodal import (
    VlmCollator,
    build_vlm_data,
    load_vlm_conversations,
    tokenize_vlm,
    vlm_sources,
)
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.runs.folder import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = {
    "qwen2_vl": "Qwen2-VL (vision-language)",
    "llava": "LLaVA (vision-language)",
    "idefics3": "Idefics3 / SmolVLM (vision-language)",
}


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlms")
    return {arch: build(root / arch) for arch, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def processors(vlm_dirs):
    from transformers import AutoProcessor

    return {arch: AutoProcessor.from_pretrained(folder) for arch, folder in vlm_dirs.items()}


@pytest.fixture
def colours(tmp_path) -> Path:
    return write_colour_data(tmp_path / "data")


def _write(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# --- data ----------------------------------------------------------------------------------


def test_llamafactory_mllm_demo_reads_unchanged():
    """LLaMA-Factory's own dataset_info.json entry: sharegpt with role/content tags, `<image>`
    placeholders and an images column, paths relative to the registry's folder."""
    registry = shared_file("dataset_info.json")
    shared_file("mllm_demo_data")
    cfg = DataConfig(registry=str(registry), dataset=["mllm_demo"])
    rejected = []
    convs, stats = load_vlm_conversations(vlm_sources(cfg), "skip", lambda *a: rejected.append(a))
    raw = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    assert rejected == [] and stats["read"] == stats["kept"] == len(raw) == len(convs)
    assert [len(c.images) for c in convs] == [len(r["images"]) for r in raw]
    first = convs[0]
    assert first.images[0] == str(SHARED_DATA / "mllm_demo_data" / "1.jpg")
    # "<image>Who are they?" -> an image part, then the text; "...doing?<image>" the reverse
    assert first.messages[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Who are they?"},
    ]
    assert first.messages[2]["content"][-1] == {"type": "image"}
    summary = stats["images"]
    assert summary["images"] == sum(len(r["images"]) for r in raw)
    assert summary["distinct_images"] == 3 and summary["width"]["min"] > 0


def test_bad_image_records_are_rejected_with_their_reason(tmp_path):
    images = write_images(tmp_path / "media")
    (tmp_path / "media" / "broken.png").write_bytes(b"not an image at all")
    red = f"media/{images['red'].name}"

    def record(content, paths, answer="It is red."):
        return {
            "messages": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": answer},
            ],
            "images": paths,
        }

    data = _write(
        tmp_path / "mixed.jsonl",
        [
            record("<image>Colour?", [red]),  # kept
            record("<image>Colour?", ["media/missing.png"]),
            record("<image>Colour?", ["media/broken.png"]),
            record("<image><image>Colour?", [red]),
            record("Colour?", [red]),
            {
                "messages": [
                    {"role": "user", "content": "<image>Colour?"},
                    {"role": "assistant", "content": "<image>red"},
                ],
                "images": [red, red],
            },
        ],
    )
    rejected = []
    convs, stats = load_vlm_conversations(
        vlm_sources(DataConfig(train=[str(data)])),
        "skip",
        lambda source, line, reason, record: rejected.append((line, reason)),
    )
    assert len(convs) == 1 and stats["read"] == 6 and stats["rejected"] == 5
    reasons = dict(rejected)
    assert "image 'media/missing.png' not found" in reasons[2]
    assert "broken.png is not a readable image" in reasons[3]
    assert "2 image placeholder(s)" in reasons[4] and "but 1 image(s)" in reasons[4]
    assert "0 image placeholder(s)" in reasons[5]
    assert "an image in an assistant turn" in reasons[6]


def test_openai_content_parts_with_paths_data_urls_and_bare_image_parts(tmp_path):
    images = write_images(tmp_path / "media")
    encoded = base64.b64encode(images["blue"].read_bytes()).decode()
    parts = [
        {"type": "image_url", "image_url": {"url": f"media/{images['red'].name}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
        {"type": "image"},
        {"type": "text", "text": "Which colours?"},
    ]
    record = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "red, blue, green"}]},
        ],
        "images": [f"media/{images['green'].name}"],
    }
    data = _write(tmp_path / "parts.jsonl", [record])
    (conv,), stats = load_vlm_conversations(vlm_sources(DataConfig(train=[str(data)])))
    assert conv.images[0] == str(tmp_path / "media" / "red.png")
    assert conv.images[1].startswith("data:image/png;base64,")
    assert conv.images[2] == str(tmp_path / "media" / "green.png")
    assert [p["type"] for p in conv.messages[0]["content"]] == ["image"] * 3 + ["text"]
    assert stats["images"]["distinct_images"] == 3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loss_is_on_assistant_tokens_only(arch, processors, tmp_path):
    """Labels cover each assistant turn and its end token; prompt and image tokens are masked
    (a two-image, two-turn conversation, the second image in the second user turn)."""
    processor = processors[arch]
    write_images(tmp_path / "media")
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>What colour?"},
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "And this one?<image>"},
            {"role": "assistant", "content": "Blue, surely."},
        ],
        "images": ["media/red.png", "media/blue.png"],
    }
    data = _write(tmp_path / "two.jsonl", [record])
    (conv,), _ = load_vlm_conversations(vlm_sources(DataConfig(train=[str(data)])))
    example = tokenize_vlm(processor, conv, cutoff_len=1024)
    ids, labels = example.input_ids, example.labels
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    tokenizer = processor.tokenizer
    # each turn through its end token (and the newline the template writes after it)
    assert tokenizer.decode(trained) == "Red.<|im_end|>\nBlue, surely.<|im_end|>\n"
    image_id = processor.image_token_id
    assert ids.count(image_id) > 2  # the placeholders were expanded into the images' tokens
    assert all(label == IGNORE_INDEX for t, label in zip(ids, labels, strict=True) if t == image_id)


def test_images_past_the_cutoff_are_rejected_not_cut(processors, colours, tmp_path):
    rejected = []
    cfg = DataConfig(train=[str(colours)], cutoff_len=8, on_error="skip")
    data = build_vlm_data(
        vlm_sources(cfg), cfg, processors["qwen2_vl"], lambda *a: rejected.append(a)
    )
    assert data.examples == [] and data.stats["rejected"] == data.stats["read"] == 8
    reasons = [reason for _, _, reason, _ in rejected]
    # the red 56 x 56 image's 4 tokens end before the cutoff (nothing of the answer is left);
    # the larger ones reach past it: cutting their tokens would break the image
    assert sum("an image cannot be cut" in r for r in reasons) == 6
    assert sum("no assistant tokens within data.cutoff_len=8" in r for r in reasons) == 2


def test_one_batch_holds_images_of_different_sizes(processors, vlm_dirs, colours):
    """Qwen2-VL: each image its own number of tokens and patches; the batch runs forward."""
    from transformers import AutoModelForImageTextToText

    processor = processors["qwen2_vl"]
    cfg = DataConfig(train=[str(colours)])
    data = build_vlm_data(vlm_sources(cfg), cfg, processor)
    batch = VlmCollator(processor)(data.examples[:4])
    grids = batch["image_grid_thw"].tolist()
    assert len({tuple(g) for g in grids}) == 4  # four sizes, four grids
    counts = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert counts == [t * h * w // 4 for t, h, w in grids]  # 2x2 patches merge into a token
    model = AutoModelForImageTextToText.from_pretrained(vlm_dirs["qwen2_vl"])
    with torch.no_grad():
        assert model(**{k: v for k, v in batch.items() if k != "labels"}).logits.shape[0] == 4


# --- training, save, load, merge -------------------------------------------------------------


def _config(tmp_path, model_dir, data, name, *overrides):
    return run_config(
        tmp_path, model_dir, data, name, "train.max_steps=10", "train.learning_rate=5e-3",
        "data.cutoff_len=256", *overrides,
    )  # fmt: skip


def _logits(model, processor, conv_images):
    from tunesmith.data.render import encode_with_images as encode
    from tunesmith.utils.images import load_image

    messages, refs = conv_images
    inputs = encode(processor, messages, [load_image(r) for r in refs], True)
    with torch.no_grad():
        return model(**inputs).logits[0, -1].float()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_trains_the_language_model_and_merges_to_the_same_logits(
    arch, vlm_dirs, colours, tmp_path, matrix_cell
):
    from tunesmith.export.merge import load_trained, merge
    from tunesmith.runs.trained import open_run

    matrix_cell("lora", "trains", "yes", kind=KINDS[arch])
    result = train_run(_config(tmp_path, vlm_dirs[arch], colours, arch))
    losses = [loss for _, loss in step_losses(result.run.root)]
    assert losses[-1] < losses[0] - 0.1
    assert (result.artifact / "processor_config.json").is_file()  # the processor beside it

    run = open_run(result.run.root)
    assert run.task == "vlm"
    conv = ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
            [str(colours.parent / "media" / "blue.png")])  # fmt: skip
    tuned, processor = run.load()
    from tunesmith.models.vlm import vlm_parts

    language = vlm_parts(tuned.get_base_model()).language  # language_model / text_model
    adapted = [n for n, _ in tuned.named_modules() if n.endswith("lora_A")]
    assert adapted and all(f".{language}." in n for n in adapted)  # the vision tower frozen
    base = run.load_untrained()
    tuned_logits = _logits(tuned, processor, conv)
    assert not torch.allclose(tuned_logits, _logits(base, processor, conv), atol=1e-4)
    trained = load_trained(result.run.root)
    merged = merge(trained)
    assert torch.allclose(_logits(merged, processor, conv), tuned_logits, atol=1e-4)


def test_full_fine_tuning_keeps_the_vision_tower_unless_asked(
    vlm_dirs, colours, tmp_path, matrix_cell
):
    matrix_cell("full", "trains", "yes", kind=KINDS["qwen2_vl"])
    from transformers import AutoModelForImageTextToText

    from tunesmith.models.vlm import vlm_parts

    base = AutoModelForImageTextToText.from_pretrained(vlm_dirs["qwen2_vl"])
    parts = vlm_parts(base)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}

    def changed(result) -> dict[str, bool]:
        tuned = AutoModelForImageTextToText.from_pretrained(result.artifact)
        moved = {n: not torch.equal(p, before[n]) for n, p in tuned.named_parameters()}
        return {
            "language": any(m for n, m in moved.items() if n.startswith(parts.language)),
            "tower": any(
                m for n, m in moved.items() if parts.is_vision(n) and not parts.is_projector(n)
            ),
            "projector": any(m for n, m in moved.items() if parts.is_projector(n)),
        }

    common = ("method.type=full", "train.max_steps=2", "train.learning_rate=1e-3")
    frozen = train_run(_config(tmp_path, vlm_dirs["qwen2_vl"], colours, "full", *common))
    assert changed(frozen) == {"language": True, "tower": False, "projector": False}
    assert frozen.summary["trainable_parameters"] < frozen.summary["total_parameters"]
    projector = train_run(
        _config(
            tmp_path, vlm_dirs["qwen2_vl"], colours, "proj", *common, "method.train_projector=true"
        )
    )
    assert changed(projector) == {"language": True, "tower": False, "projector": True}


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    vlm_dirs, colours, tmp_path, matrix_cell
):
    matrix_cell("lora", "resumes", "yes", kind=KINDS["llava"])

    def config(steps, name):
        return _config(
            tmp_path, vlm_dirs["llava"], colours, name, f"train.max_steps={steps}",
            "train.save_steps=2",
        )  # fmt: skip

    whole = train_run(config(4, "whole"))
    train_run(config(2, "part"))
    resumed = train_run(config(4, "part"), resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    assert step_losses(resumed.run.root)[-1][1] == pytest.approx(
        step_losses(whole.run.root)[-1][1], rel=1e-4
    )


def test_a_text_only_method_is_refused_for_a_vision_language_model(vlm_dirs, colours, tmp_path):
    from tunesmith.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.type: prompt is not available"):
        train_run(_config(tmp_path, vlm_dirs["llava"], colours, "p", "method.type=prompt"))


def test_rejects_go_to_the_run_folder(vlm_dirs, colours, tmp_path):
    records = json.loads(colours.read_text())
    records[0]["images"] = ["media/nowhere.png"]
    colours.write_text(json.dumps(records), encoding="utf-8")
    result = train_run(
        _config(
            tmp_path, vlm_dirs["llava"], colours, "r", "data.on_error=skip", "train.max_steps=1"
        )
    )
    assert result.summary["data"]["rejected"] == 1 and result.summary["data"]["examples"] == 7
    (rejected,) = read_jsonl(result.run.rejects_path)
    assert "nowhere.png' not found" in rejected["reason"]


def test_an_image_question_without_an_answer_has_no_reference(tmp_path):
    from tunesmith.data.multimodal import image_question
    from tunesmith.data.readers import RawRecord

    write_images(tmp_path / "media")
    data = {
        "messages": [{"role": "user", "content": "<image>Colour?"}],
        "images": ["media/red.png"],
    }
    prompt, reference = image_question(RawRecord(str(tmp_path / "q.jsonl"), 1, data), "openai")
    assert reference is None and prompt[0]["content"][0]["image"].endswith("red.png")


def test_eval_answers_image_questions_base_against_tuned(vlm_dirs, colours, tmp_path):
    """tunesmith eval on the same image records: the tuned run names the colour it sees, the
    base model does not; perplexity is skipped for a vision-language model with its reason."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluation.runner import run_eval

    result = train_run(
        _config(tmp_path, vlm_dirs["qwen2_vl"], colours, "e", "train.max_steps=30",
                "train.learning_rate=1e-2", "method.r=16")
    )  # fmt: skip
    config = load_config(
        None,
        [
            f"eval.data=[{colours}]",
            "eval.tasks=[generation,perplexity,robustness,speed]",
            "eval.max_new_tokens=8",
            "eval.speed.requests=2",
            "eval.robustness.max_items=2",
        ],
    )
    report = run_eval(config, result.run.root)
    tuned, base = report["results"]["model"], report["results"]["baseline"]
    assert report["items"][0]["prompt"] == "What colour is this?"
    assert report["items"][0]["messages"][0]["content"][0]["image"].endswith(".png")
    right = [
        item["reference"].split()[-1].rstrip(".") in reply
        for item, reply in zip(report["items"], tuned["predictions"], strict=True)
    ]
    assert sum(right) >= 4  # the colour only the image tells, for at least two of the four
    chrf = lambda r: r["tasks"]["generation"]["corpus"]["chrf"]  # noqa: E731
    assert chrf(tuned) > chrf(base) + 30
    assert "vision-language" in tuned["tasks"]["perplexity"]["skipped"]
    assert tuned["tasks"]["replies"]["context_tokens"] == 1024  # its language model's positions
    assert tuned["tasks"]["speed"]["requests"] == 2  # image prompts timed as they are
    assert tuned["tasks"]["robustness"]  # the question's text perturbed, its image kept


def test_data_inspect_reports_image_counts_sizes_and_problems(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    registry = shared_file("dataset_info.json")
    shared_file("mllm_demo_data")
    args = ["data", "inspect", "mllm_demo", "--registry", registry, "--out", tmp_path / "lf"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    raw = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    count = sum(len(r["images"]) for r in raw)
    assert f"images: {count} (3 distinct) in {len(raw)} records" in result.output
    assert "0 records with image problems" in result.output
    report = json.loads((tmp_path / "lf" / "inspect.json").read_text())
    assert report["images"]["width"]["max"] > 0

    data = write_colour_data(tmp_path / "mine")
    records = json.loads(data.read_text())
    records[1]["images"] = []
    data.write_text(json.dumps(records), encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "inspect", str(data), "--out", str(tmp_path / "o")])
    assert "1 records with image problems (first: 1 image placeholder(s)" in result.output


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_plan_counts_the_vision_tower_and_trains_what_training_trains(
    arch, vlm_dirs, processors, colours
):
    from transformers import AutoModelForImageTextToText

    from tunesmith.config.load import load_config
    from tunesmith.models.methods import count_parameters, get_method
    from tunesmith.models.vlm import vision_parameters
    from tunesmith.plan import make_plan

    config = load_config(None, [f"model.name_or_path={vlm_dirs[arch]}", f"data.train=[{colours}]"])
    plan = make_plan(config, probe=False)
    built = build_vlm_data(vlm_sources(config.data), config.data, processors[arch])
    assert plan.data.tokens == built.stats["tokens"]  # the images' tokens counted, as trained
    assert f"({built.stats['image_tokens']} image tokens)" in plan.data.note
    model = AutoModelForImageTextToText.from_pretrained(vlm_dirs[arch])
    total = count_parameters(model)[1]
    applied = get_method("lora").apply(model, config.method, task="vlm")
    assert plan.facts.total == total and plan.facts.vision == vision_parameters(model) > 0
    assert plan.trainable == count_parameters(applied)[0]
    assert "vision tower" in plan.time.note
    from tunesmith.plan.time import vision_flops_per_token

    share = built.stats["image_tokens"] / built.stats["tokens"]
    # Qwen2-VL merges 2x2 patches into a token, Idefics3's pixel shuffle too (scale_factor 2)
    patches = {"qwen2_vl": 4, "llava": 1, "idefics3": 4}[arch]
    assert plan.facts.patches_per_image_token == patches
    assert vision_flops_per_token(plan) == pytest.approx(share * patches * 2 * plan.facts.vision)
    advised = [plan.advice.recommended, *plan.advice.alternatives]
    assert {o.method for o in advised} <= {"lora", "qlora", "full"}


def test_qlora_on_a_vision_language_model_needs_a_gpu_or_trains_the_language_model(
    vlm_dirs, colours, tmp_path
):
    """QLoRA loads the VLM 4-bit (models/vlm.load_vlm with the method's quantization config) and
    adapts the language model's linears as LoRA does; without CUDA it is one sentence."""
    from tunesmith.utils.errors import ModelError

    config = _config(tmp_path, vlm_dirs["qwen2_vl"], colours, "q", "method.type=qlora")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="method qlora needs a CUDA GPU"):
            train_run(config)
        return
    result = train_run(config)  # on a GPU with bitsandbytes
    saved = json.loads((result.artifact / "adapter_config.json").read_text())["target_modules"]
    assert all("language_model" in name for name in saved)
    losses = [loss for _, loss in step_losses(result.run.root)]
    assert losses[-1] < losses[0]


def test_export_merges_a_vlm_adapter_and_verifies_it_with_an_image(
    vlm_dirs, colours, tmp_path, matrix_cell
):
    """tunesmith export: the merged model and its processor reload as a vision-language model
    whose logits on the check prompts (an image in each) equal the adapter's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tunesmith.config.load import load_config
    from tunesmith.export.run import export_run

    matrix_cell("lora", "exports", "yes (merged)", kind=KINDS["llava"])
    result = train_run(_config(tmp_path, vlm_dirs["llava"], colours, "x", "train.max_steps=3"))
    config = load_config(None, [f"export.dir={tmp_path / 'exported'}"])
    exported = export_run(config, result.run.root)
    assert exported.layout == "merged" and exported.verification.passed
    assert exported.verification.adapter_effect > 0  # the check saw the adapter's effect
    AutoProcessor.from_pretrained(exported.folder)
    model = AutoModelForImageTextToText.from_pretrained(exported.folder)
    assert model.generation_config.eos_token_id is not None


def test_a_run_trains_on_llamafactory_mllm_demo_by_its_registry_name(vlm_dirs, tmp_path):
    registry = shared_file("dataset_info.json")
    shared_file("mllm_demo_data")
    result = train_run(
        _config(tmp_path, vlm_dirs["qwen2_vl"], None, "lf", f"data.registry={registry}",
                "data.dataset=mllm_demo", "train.max_steps=2", "data.cutoff_len=512")
    )  # fmt: skip
    data = result.summary["data"]
    assert data["read"] == data["examples"] == 6 and data["rejected"] == 0
    raw = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    assert data["images"] == sum(len(r["images"]) for r in raw) and data["image_tokens"] > 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_text_only_records_share_a_batch_with_image_records(arch, processors, vlm_dirs, tmp_path):
    from transformers import AutoModelForImageTextToText

    write_images(tmp_path / "media")
    records = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "<image>Colour?"},
                {"role": "assistant", "content": "Green."},
            ],
            "images": ["media/green.png"],
        },
    ]
    data = _write(tmp_path / "mixed.jsonl", records)
    cfg = DataConfig(train=[str(data)])
    built = build_vlm_data(vlm_sources(cfg), cfg, processors[arch])
    assert built.stats["records_with_images"] == 1 and built.stats["examples"] == 2
    batch = VlmCollator(processors[arch])(built.examples)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dirs[arch])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = model(**inputs, labels=batch["labels"]).loss
    assert torch.isfinite(loss)


def test_lora_with_the_vision_tower_and_projector_trained_merges_to_the_same_logits(
    vlm_dirs, colours, tmp_path
):
    from tunesmith.export.merge import load_trained, merge
    from tunesmith.runs.trained import open_run

    result = train_run(
        _config(tmp_path, vlm_dirs["llava"], colours, "v", "method.train_vision=true",
                "method.train_projector=true", "train.max_steps=3")
    )  # fmt: skip
    conv = ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
            [str(colours.parent / "media" / "green.png")])  # fmt: skip
    tuned, processor = open_run(result.run.root).load()
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in tuned.named_modules() if n.endswith("lora_A")}
    assert any("vision_tower" in n for n in adapted) and any("language_model" in n for n in adapted)
    assert not any("multi_modal_projector" in n for n in adapted)  # trained whole instead
    assert any("multi_modal_projector.modules_to_save" in n for n, _ in tuned.named_modules())
    merged = merge(load_trained(result.run.root))
    assert torch.allclose(
        _logits(merged, processor, conv), _logits(tuned, processor, conv), atol=1e-4
    )
