"""What answers, from a reference: a model ref, a run or artifact folder, or an API URL.

`create_engine` (evaluation, serving) and `make_client` (data tools, judge, distillation) turn
what a user names into something that generates. They open runs through runs/trained.py, so
they sit above models/, which holds the engines and clients themselves and loads nothing by
reference.

    make_client("local:smollm2-135m-instruct")          # a model ref, or a run / adapter folder
    make_client("http://127.0.0.1:8000/v1#qwen2.5-7b")  # URL; '#model' optional if it serves one
    make_client("openai#gpt-4o-mini")                   # URL from TUNESMITH_API_BASE or similar
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.schema import ModelConfig
from tunesmith.models.client import BASE_URL_ENV, LocalClient, OpenAIClient, first_env
from tunesmith.models.engine import (
    ENGINE_KINDS,
    Engine,
    VLLMEngine,
    require_vllm,
)
from tunesmith.models.vlm_engine import engine_for
from tunesmith.runs.trained import is_trained_run, load_for_inference, open_run
from tunesmith.utils.errors import ConfigError, ModelError
from tunesmith.utils.llm import ChatClient


def create_engine(
    model_cfg: ModelConfig | None,
    adapter: str | Path | None = None,
    kind: str = "transformers",
    batch_size: int = 16,
) -> Engine:
    """An engine for a base model, a run folder, or an adapter / tuned-model folder."""
    if kind == "transformers":
        model, tokenizer = load_for_inference(adapter, model_cfg)
        return engine_for(model, tokenizer, batch_size)  # a VLM's processor: VlmEngine
    if kind == "vllm":
        require_vllm()  # before any loading: fail in one sentence, fast
        _no_vllm_for_images(model_cfg, adapter)
        return _create_vllm(model_cfg, adapter)
    raise ConfigError(f"unknown engine '{kind}': expected one of {', '.join(ENGINE_KINDS)}")


def _no_vllm_for_images(model_cfg: ModelConfig | None, adapter: str | Path | None) -> None:
    from tunesmith.models.vlm import is_vision_language

    run = open_run(adapter, model_cfg) if adapter is not None else None
    if (run is not None and run.task == "vlm") or (
        run is None and model_cfg is not None and is_vision_language(model_cfg)
    ):
        raise ModelError(
            "the vllm engine is not wired for vision-language models in tunesmith yet (image "
            "inputs go through the processor); use engine 'transformers'"
        )


def _create_vllm(model_cfg: ModelConfig | None, adapter: str | Path | None) -> VLLMEngine:
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model

    if adapter is None:
        if model_cfg is None:
            raise ModelError("no model: name a base model (--model) or a run folder")
        base = resolve_model(model_cfg.name_or_path)
        return VLLMEngine(base.path, load_tokenizer(base, model_cfg), None, dtype=model_cfg.dtype)
    run = open_run(adapter, model_cfg)
    if run.is_adapter and run.method.name not in ("lora", "qlora"):
        raise ModelError(
            f"vLLM serves LoRA adapters only, and '{run.artifact}' is {run.method.name}; "
            "merge it first (tunesmith export) or use engine 'transformers'"
        )
    cfg = run.model_cfg or ModelConfig()
    base = resolve_model(run.base_ref).path if run.is_adapter else str(run.artifact)
    lora = run.artifact if run.is_adapter else None
    tokenizer = run.load_tokenizer()  # the run's saved template wins
    tokenizer_dir = str(run.artifact)
    return VLLMEngine(base, tokenizer, lora, tokenizer_path=tokenizer_dir, dtype=cfg.dtype)


def make_client(spec: str | dict) -> ChatClient:
    """A client from `local:<ref>`, an http(s) URL (`#model` optional), `openai[#model]`, or a
    dict ({"base_url", "model", "api_key", ...} or {"local": ref, "adapter": path})."""
    if isinstance(spec, dict):
        spec = dict(spec)
        if "local" in spec:
            return local_client(spec.pop("local"), **spec)
        if "base_url" not in spec:
            raise ModelError(f"model spec {spec} needs 'base_url' (an API) or 'local' (a model)")
        return OpenAIClient(**spec)
    if spec.startswith("local:"):
        return local_client(spec.removeprefix("local:"))
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")  # a fragment is never sent, so it can name the model
        return OpenAIClient(url, model or None)
    if spec == "openai" or spec.startswith("openai#"):
        base = first_env(BASE_URL_ENV)
        if not base:
            raise ModelError(f"'{spec}' needs the API's base URL in {' or '.join(BASE_URL_ENV)}")
        return OpenAIClient(base, spec.partition("#")[2] or None)
    raise ModelError(
        f"unknown model spec '{spec}': use local:<model ref> or the URL of an OpenAI-compatible "
        "API such as http://127.0.0.1:8000/v1#<model>"
    )


def local_client(ref: str, adapter: str | Path | None = None, batch_size: int = 8) -> LocalClient:
    """A model ref (with an optional adapter), or a run / adapter folder, which knows its base."""
    if adapter is None and Path(ref).is_dir() and is_trained_run(ref):
        model, tokenizer = load_for_inference(ref)
    else:
        model, tokenizer = load_for_inference(adapter, ModelConfig(name_or_path=ref))
    return LocalClient(model, tokenizer, batch_size)
