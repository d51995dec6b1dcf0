"""The support matrix, proved on the tiny Llama: for every method, SFT trains and reloads as
trained, an interrupted run resumes to the same model, the HTTP server answers with the trained
model's logits, export writes a merged model (or base + adapter with the reason) that reloads
equal, GGUF where the weights merge, and packing where the method allows it.

Each test records its cell through `matrix_cell`; scripts/support_matrix.py runs this file and
writes docs/support-matrix.md from the outcomes, so a cell says yes only when a test proved it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import LiveServer, run_config, train_run

from tunesmith.config.methods import QLoraMethod
from tunesmith.config.schema import ModelConfig, RunConfig
from tunesmith.data.render import prompt_ids
from tunesmith.models.engine import GenerationParams, TransformersEngine
from tunesmith.models.methods import Method, get_method
from tunesmith.runs.trained import load_for_inference, open_run
from tunesmith.utils.errors import ConfigError, ModelError

METHODS = {
    "full": [],
    "freeze": ["method.trainable_layers=1"],
    "lora": ["method.r=4"],
    "ia3": [],
    "prefix": ["method.num_virtual_tokens=4", "method.projection=true"],
    "prompt": ["method.num_virtual_tokens=4"],
    "ptuning": ["method.num_virtual_tokens=4"],
    "adapter": ["method.adapter_size=8"],
    "hybrid": ["method.r=4", "method.adapter_size=8"],
}
PROBE = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."
STEPS = ["train.max_steps=4", "train.save_steps=2", "train.learning_rate=1e-2"]


@dataclass
class Case:
    root: Path  # the run folder
    logits: torch.Tensor  # the trained model's, taken as it was saved


def probe_logits(model, tokenizer) -> torch.Tensor:
    """Logits over a prompt and answer; virtual tokens (prompt tuning) are cut off the front."""
    ids = prompt_ids(tokenizer, PROBE) + tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    return logits[:, -len(ids) :].float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> dict[str, Case]:
    """Every method trained once; the logits of each trained model as method.save got it."""
    root = tmp_path_factory.mktemp("matrix")
    data = root / "data.jsonl"
    record = {"messages": [*PROBE, {"role": "assistant", "content": ANSWER}]}
    data.write_text((json.dumps(record) + "\n") * 8, encoding="utf-8")
    captured: dict[str, torch.Tensor] = {}
    save = Method.save

    def spy(self, model, tokenizer, out_dir, cfg, task="causal_lm"):
        captured[Path(out_dir).parent.name] = probe_logits(model, tokenizer)
        save(self, model, tokenizer, out_dir, cfg, task)

    cases = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Method, "save", spy)
        for method, overrides in METHODS.items():
            config = run_config(
                root, tiny_model_dir, data, method, f"method.type={method}", *STEPS, *overrides
            )
            result = train_run(config)
            cases[method] = Case(result.run.root, captured[method])
    return cases


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir) -> torch.Tensor:
    return probe_logits(
        *load_for_inference(model_cfg=ModelConfig(name_or_path=str(tiny_model_dir)))
    )


@pytest.mark.parametrize("method", METHODS)
def test_trains_and_reloads_as_trained(method, trained, base_logits, matrix_cell):
    matrix_cell(method, "trains", "yes")
    case = trained[method]
    assert not torch.allclose(case.logits, base_logits, atol=1e-4)  # training changed it
    reloaded = probe_logits(*open_run(case.root).load())
    assert torch.allclose(reloaded, case.logits, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_resumes_to_the_same_model(method, trained, tmp_path, matrix_cell):
    """The run cut after its step-2 checkpoint (later checkpoint and artifact gone) resumes to
    the model the uninterrupted run saved."""
    matrix_cell(method, "resumes", "yes")
    case = trained[method]
    cut = tmp_path / "runs" / method
    shutil.copytree(case.root, cut)
    for later in [cut / "checkpoints" / "checkpoint-4", cut / get_method(method).artifact]:
        shutil.rmtree(later)
    (cut / "summary.json").unlink()
    config = open_run(case.root).config.model_copy(deep=True)
    config.output.dir, config.output.name = str(tmp_path / "runs"), method
    train_run(config, resume=True)
    assert torch.allclose(probe_logits(*open_run(cut).load()), case.logits, atol=1e-5)


@pytest.fixture(scope="module")
def server(trained, tiny_model_dir):
    runs = next(iter(trained.values())).root.parent
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "serve": {"model_name": "base", "adapters_dir": str(runs)},
        }
    )
    from tunesmith.serve.server import build_state

    live = LiveServer(build_state(config))
    yield live
    live.stop()


@pytest.mark.parametrize("method", METHODS)
def test_server_answers_as_the_trained_model(method, trained, server, matrix_cell):
    matrix_cell(method, "serves", "yes")
    case = trained[method]
    state = server.state
    with state.batcher.lock, state.registry.use(method) as engine:
        served = probe_logits(engine.model, engine.tokenizer)
    assert torch.allclose(served, case.logits, atol=1e-5)
    reply = server.client().chat.completions.create(
        model=method, messages=PROBE, max_tokens=8, temperature=0
    )
    engine = TransformersEngine(*open_run(case.root).load())
    expected = engine.generate([PROBE], GenerationParams(max_new_tokens=8))[0].text
    assert reply.choices[0].message.content == expected


@pytest.mark.parametrize("method", METHODS)
def test_export_reloads_as_trained(method, trained, tmp_path, matrix_cell):
    form = get_method(method)
    layout = "full model" if form.artifact == "model" else "merged"
    matrix_cell(method, "exports", layout if form.mergeable else "base + adapter (no merge)")
    from tunesmith.export.run import export_run

    out = tmp_path / "export"
    result = export_run(
        RunConfig.model_validate({"export": {"dir": str(out)}}), trained[method].root
    )
    assert result.verification.passed
    if form.mergeable:
        assert result.layout in ("merged", "full")
        reloaded = load_for_inference(model_cfg=ModelConfig(name_or_path=str(out), dtype="float32"))
    else:
        assert result.layout == "base+adapter"
        assert f"method {method}: " in result.statement and "cannot be merged" in result.statement
        base = ModelConfig(name_or_path=str(out / "base"), dtype="float32")
        reloaded = open_run(out / "adapter", base).load()
    assert torch.allclose(probe_logits(*reloaded), trained[method].logits, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_gguf_where_the_weights_merge(method, trained, tmp_path, matrix_cell):
    form = get_method(method)
    matrix_cell(method, "gguf", "yes" if form.mergeable else "no: cannot merge")
    from tunesmith.export.run import export_run

    config = RunConfig.model_validate({"export": {"dir": str(tmp_path / "x"), "gguf": True}})
    if not form.mergeable:
        with pytest.raises(ConfigError, match=f"needs merged weights, and {method} cannot"):
            export_run(config, trained[method].root)
        return
    export_run(config, trained[method].root)
    facts = json.loads((tmp_path / "x" / "export.json").read_text())
    (f16,) = facts["gguf"]  # the default type, read back by transformers' GGUF loader
    assert f16["file"] == "model-F16.gguf" and f16["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_packing_where_the_method_allows_it(method, trained, matrix_cell):
    packs = get_method(method).packing
    matrix_cell(method, "packs", "yes" if packs else "no: virtual tokens (turned off)")
    assert open_run(trained[method].root).config.train.packing is packs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU guard; GPU runs train it")
def test_qlora_without_cuda_says_what_it_needs(matrix_cell):
    for capability in ("trains", "resumes", "serves", "exports", "gguf", "packs"):
        matrix_cell("qlora", capability, "needs CUDA + bitsandbytes")
    with pytest.raises(ModelError, match="method qlora needs a CUDA GPU"):
        get_method("qlora").quantization_config(QLoraMethod())


@pytest.mark.parametrize("method", ["adapter", "hybrid", "lora"])
def test_artifact_copied_out_of_its_run_folder_keeps_its_method(
    method, trained, tmp_path, tiny_model_dir
):
    """An adapter folder on its own says what it is (its marker): export names the method and
    merges only what merges; the model it loads onto the named base is the trained one."""
    from tunesmith.export.run import export_run

    alone = shutil.copytree(trained[method].root / "adapter", tmp_path / f"{method}-adapter")
    base = ModelConfig(name_or_path=str(tiny_model_dir))
    run = open_run(alone, base)
    assert (run.method.name, run.method.mergeable) == (method, method == "lora")
    assert torch.allclose(probe_logits(*run.load()), trained[method].logits, atol=1e-5)
    config = RunConfig.model_validate({"model": base.model_dump(), "export": {}})
    result = export_run(config, alone)
    assert result.layout == ("merged" if method == "lora" else "base+adapter")
    assert result.statement.startswith(
        f"{method} adapter merged" if method == "lora" else f"method {method}: "
    )


@pytest.mark.parametrize("method", ["adapter", "hybrid"])
def test_serve_one_run_that_cannot_share_its_base(method, trained, tiny_model_dir):
    """`tunesmith serve --adapter RUN` for a method PEFT cannot switch: the run answers as
    trained under its name, the base as the base."""
    from tunesmith.serve.server import build_state

    config = open_run(trained[method].root).config
    state = build_state(config, trained[method].root)
    with state.registry.use(method) as engine:
        assert torch.allclose(
            probe_logits(engine.model, engine.tokenizer), trained[method].logits, atol=1e-5
        )
    with state.registry.use(state.registry.base_name) as engine:
        base = load_for_inference(model_cfg=ModelConfig(name_or_path=str(tiny_model_dir)))
        assert torch.allclose(probe_logits(engine.model, engine.tokenizer), probe_logits(*base))


def test_a_folder_that_is_no_run_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match=r"is neither a run folder \(config\.yaml\), an adapter"):
        open_run(tmp_path)
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ModelError, match=r"config\.yaml is damaged"):
        open_run(damaged)
    (damaged / "config.yaml").write_text("method: {type: lora}\n")
    with pytest.raises(ModelError, match="has no trained adapter/ yet"):
        open_run(damaged)
