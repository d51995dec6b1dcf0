"""The models a server answers for: one base and PEFT adapters on it, chosen by name.

A request's `model` string is only ever compared with names found by listing the adapters
folder; it never becomes part of a path, so no name can reach outside that folder. A listed
entry that resolves outside it (a symlink) is left out too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from tunesmith.models.engine import Engine, TransformersEngine
from tunesmith.models.tuned import find_artifact
from tunesmith.utils.errors import ModelError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelRegistry:
    """Base model plus adapters; `use(name)` switches to one. Call it from one thread at a time."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        adapters_dir: str | Path | None = None,
        adapters: dict[str, Path] | None = None,
    ):
        self.engine = engine
        self.base_name = base_name
        self.root = Path(adapters_dir).resolve() if adapters_dir else None
        self.explicit = dict(adapters or {})  # given by the operator (--adapter), trusted
        # name -> PEFT adapter name: PEFT keys modules by it, so a folder name with a dot, or
        # one inside "lora_" (such as "a"), must not reach it
        self.loaded: dict[str, str] = {}

    def names(self) -> list[str]:
        return [self.base_name, *sorted(self.available())]

    def available(self) -> dict[str, Path]:
        """Adapter name -> adapter folder, from the configured folder and explicit adapters."""
        found = dict(self.explicit)
        if self.root is not None and self.root.is_dir():
            for child in self.root.iterdir():
                if child.name in found or not _NAME.fullmatch(child.name):
                    continue
                if not child.resolve().is_relative_to(self.root):
                    continue  # a symlink out of the folder
                adapter = _adapter_folder(child)
                if adapter is not None:
                    found[child.name] = adapter
        return found

    def knows(self, name: str) -> bool:
        return name == self.base_name or name in self.loaded or name in self.available()

    def load(self, name: str) -> None:
        """Attach adapter `name` (PEFT multi-adapter); a no-op when loaded or the base."""
        if name == self.base_name or name in self.loaded:
            return
        folder = self.available().get(name)
        if folder is None:
            raise ModelError(f"no adapter named '{name}'")
        if not isinstance(self.engine, TransformersEngine):
            raise ModelError("adapters are switched per request with the transformers engine only")
        self._check_template(name, folder)
        model, internal = self.engine.model, f"adapter_{len(self.loaded)}"
        if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
            model.load_adapter(str(folder), adapter_name=internal)
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder), adapter_name=internal)
            self.engine.model = model
        model.eval()
        self.loaded[name] = internal

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Engine]:
        """The engine with adapter `name` active (the base: every adapter off)."""
        self.load(name)
        model = getattr(self.engine, "model", None)
        if name == self.base_name:
            off = model.disable_adapter() if self.loaded else contextlib.nullcontext()
            with off:
                yield self.engine
            return
        model.set_adapter(self.loaded[name])
        yield self.engine

    def _check_template(self, name: str, folder: Path) -> None:
        # One template for all: an adapter trained on another template would be prompted wrongly.
        if not (folder / "tokenizer_config.json").is_file():
            return
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(folder).chat_template
        if own and own != self.engine.tokenizer.chat_template:
            raise ModelError(
                f"adapter '{name}' was trained with another chat template than the base model's; "
                "serve it on its own (tunesmith serve --adapter FOLDER)"
            )


def _adapter_folder(path: Path) -> Path | None:
    """The PEFT adapter folder of a run folder or adapter folder; None for anything else."""
    try:
        artifact, _ = find_artifact(path)
    except ModelError:
        return None
    return artifact if (artifact / "adapter_config.json").is_file() else None
