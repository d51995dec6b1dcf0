"""`tunesmith export`: merge, save, reload, verify, write the card; all or nothing.

The export is written into a staging folder and renamed into place only after the reloaded
export has passed verification, so a failed export never leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config.schema import ExportConfig, ModelConfig, RunConfig
from tunesmith.export.card import card_facts, render_card
from tunesmith.export.merge import Trained, load_trained, merge
from tunesmith.export.verify import (
    Verification,
    default_tolerance,
    eos_ok,
    prompt_logits,
    sample_conversations,
    template_identical,
    verify,
    with_sample_image,
)
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.resolve import ResolvedModel
from tunesmith.models.vlm import is_processor, load_processor, load_vlm, text_tokenizer
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, ModelError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# adapter files worth shipping; pickled weights (*.bin, *.pt) are never copied
_ADAPTER_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model")


@dataclass
class ExportResult:
    folder: Path
    layout: str  # merged | full | base+adapter
    verification: Verification | None
    statement: str  # one sentence on what was exported


def export_run(config: RunConfig, source: str | Path) -> ExportResult:
    """Export the run (or adapter / model folder) `source` as described by `config.export`."""
    cfg = config.export
    source = Path(source)
    out = Path(cfg.dir) if cfg.dir else _default_out(source)
    _check_out(out, cfg.overwrite)
    trained = load_trained(source, config.model)
    convs = sample_conversations(cfg.verify_prompts)
    if is_processor(trained.tokenizer):  # a vision-language model: checked with an image too
        convs = with_sample_image(convs)
    reference = prompt_logits(trained.model, trained.tokenizer, convs)
    base = _base_logits(trained, convs) if trained.is_adapter else None
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        layout, statement = _save(trained, staging, cfg)
        verification = None
        if cfg.verify:
            verification = _verify(trained, staging, layout, cfg, convs, reference, base)
            if not verification.passed:
                raise ModelError("export verification failed: " + "; ".join(verification.problems))
        gguf_files = _gguf(staging, layout, trained.method, cfg) if cfg.gguf else None
        _write_card(trained, staging, layout, verification, gguf_files)
        _usual_modes(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, layout, verification, statement)


def save_model(model, tokenizer, folder: Path, cfg: ExportConfig) -> None:
    """safetensors shards, tokenizer with its chat template, generation config (eos/pad)."""
    model = model.to(_DTYPES[cfg.dtype])
    text = text_tokenizer(tokenizer)  # a vision-language model's processor: its tokenizer
    gen = model.generation_config
    configured = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    # the chat turn's end token first: servers that read one eos id stop where training stopped
    eos = [i for i in dict.fromkeys([text.eos_token_id, *configured]) if i is not None]
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    gen.pad_token_id = text.pad_token_id
    model.config.eos_token_id, model.config.pad_token_id = gen.eos_token_id, gen.pad_token_id
    model.save_pretrained(folder, max_shard_size=cfg.max_shard_size)
    tokenizer.save_pretrained(folder)


def _base_logits(trained: Trained, convs) -> list:
    """The base model's logits, to show the adapter changes them: the adapter switched off where
    that leaves the base (PEFT adapters), else the base loaded beside it."""
    if trained.run.method.shares_base:
        with trained.model.disable_adapter():
            return prompt_logits(trained.model, trained.tokenizer, convs)
    base = trained.run.load_untrained("float32")
    return prompt_logits(base, trained.tokenizer, convs)


def _save(trained: Trained, staging: Path, cfg: ExportConfig) -> tuple[str, str]:
    if not trained.is_adapter:
        save_model(trained.model, trained.tokenizer, staging, cfg)
        return "full", f"full model ({trained.method}) saved as safetensors"
    if trained.mergeable:
        save_model(merge(trained), trained.tokenizer, staging, cfg)
        dequant = " into dequantized base weights" if trained.quantized else ""
        return "merged", f"{trained.method} adapter merged{dequant}"
    # a fresh base: the tuned model's own modules (bottleneck adapters) must not go into it
    save_model(trained.run.load_untrained("float32"), trained.tokenizer, staging / "base", cfg)
    (staging / "adapter").mkdir()
    for pattern in _ADAPTER_FILES:
        for file in trained.artifact.glob(pattern):
            shutil.copy2(file, staging / "adapter" / file.name)
    return "base+adapter", (
        f"method {trained.method}: {trained.run.method.not_mergeable}. Exported the base model "
        "(base/) and the adapter (adapter/) unmerged; load them with tunesmith "
        "(open_run('adapter', model_cfg) on base/)"
        + (" or PeftModel.from_pretrained" if trained.run.method.shares_base else "")
    )


def _verify(trained, staging, layout, cfg, convs, reference, base) -> Verification:
    model_dir = staging / "base" if layout == "base+adapter" else staging
    # the saved template must stand alone: no model.chat_template override on reload
    plain = ModelConfig(name_or_path=str(model_dir), dtype="float32")
    vlm = is_processor(trained.tokenizer)  # reloaded with its processor (models/vlm.py)
    model = (load_vlm if vlm else load_causal_lm)(_local(model_dir), plain)
    tok_dir = staging / "adapter" if layout == "base+adapter" else staging
    tokenizer = (load_processor if vlm else load_tokenizer)(_local(tok_dir), plain)
    gen_ok = eos_ok(model.generation_config, tokenizer)
    if layout == "base+adapter":
        model = trained.run.method.load(model, staging / "adapter")
    model.eval()
    exported = prompt_logits(model, tokenizer, convs)
    tolerance = cfg.tolerance or default_tolerance(cfg.dtype, reference)
    same_template = template_identical(trained.tokenizer, tokenizer, convs)
    return verify(reference, exported, tolerance, same_template, gen_ok, base)


def _gguf(staging: Path, layout: str, method: str, cfg: ExportConfig) -> list[dict]:
    from tunesmith.export.gguf import write_gguf

    if layout == "base+adapter":
        raise ConfigError(f"export.gguf: needs merged weights, and {method} cannot be merged")
    return write_gguf(staging, cfg.gguf_types, cfg.verify_prompts, llama_cpp=cfg.llama_cpp)


def _write_card(trained: Trained, staging: Path, layout: str, verification, gguf_files) -> None:
    run_config = trained.run.config.model_dump(mode="json") if trained.run.config else {}
    facts = card_facts(
        trained, run_config, verification.to_dict() if verification else None, layout
    )
    if gguf_files is not None:
        facts["gguf"] = gguf_files
    (staging / "README.md").write_text(render_card(facts), encoding="utf-8")
    text = json.dumps(facts, indent=2, ensure_ascii=False, default=str) + "\n"
    (staging / "export.json").write_text(text, encoding="utf-8")


def _usual_modes(folder: Path) -> None:
    """Every file and folder of the export with the modes the umask gives new ones (0644 and
    0755 under the usual 022). safetensors writes its files through a private temporary file
    renamed into place, which leaves them 0600: readable by their owner alone, unlike the rest
    (a server or colleague reading the export under another user could not load the weights);
    and the adapter files copied from the run keep that mode too."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _default_out(source: Path) -> Path:
    if RunFolder(source).config_path.is_file():
        return source / "export"
    return source.parent / f"{source.name}-export"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"export.dir: '{out}' already exists; set export.overwrite=true or another export.dir"
        )


def _local(folder: Path) -> ResolvedModel:
    return ResolvedModel(str(folder), str(folder), "local")


def report(result: ExportResult) -> None:
    console.print(result.statement)
    v = result.verification
    if v is not None:
        effect = f", adapter effect {v.adapter_effect:.3g}" if v.adapter_effect is not None else ""
        console.print(
            f"verified: max |logit diff| {v.max_abs_diff:.3g} <= {v.tolerance:.3g}{effect}, "
            f"template identical, eos ok"
        )
        if v.adapter_effect == 0:
            console.print("[yellow]warning: the adapter does not change the logits (untrained?)")
    console.print(f"exported to {result.folder}")
