"""The models a server answers for: one base model and the trained runs beside it, by name.

A run whose method PEFT can switch per request on a shared base (LoRA, IA3, prompt, prefix,
p-tuning) and that was trained on the served base with the same chat template is attached to
that base as a named adapter; PEFT holds adapters of one type per model, so each PEFT type
gets one copy of the base. Any other run (bottleneck adapters, hybrid, a full or freeze model,
another base or template) gets an engine of its own, loaded exactly as it was trained; the
method form says which (models/methods/).

A request's `model` string is only ever compared with names found by listing the adapters
folder; it never becomes part of a path, so no name can reach outside that folder. A listed
entry that resolves outside it (a symlink) is left out too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from tunesmith.config.schema import ModelConfig
from tunesmith.models.engine import Engine, TransformersEngine
from tunesmith.models.methods._peft import peft_quietly
from tunesmith.models.resolve import resolve_model
from tunesmith.models.vlm_engine import engine_for
from tunesmith.runs.trained import TrainedRun, is_trained_run, open_run
from tunesmith.utils.errors import ModelError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelRegistry:
    """Base model plus runs; `use(name)` gives the engine answering for one. Call it from one
    thread at a time."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        adapters_dir: str | Path | None = None,
        adapters: dict[str, Path] | None = None,
        base_cfg: ModelConfig | None = None,
    ):
        self.engine = engine
        self.base_name = base_name
        self.base_cfg = base_cfg  # also the base of adapter folders outside a run folder
        self.base_path = resolve_model(base_cfg.name_or_path).path if base_cfg else None
        self.root = Path(adapters_dir).resolve() if adapters_dir else None
        self.explicit = dict(adapters or {})  # given by the operator (--adapter), trusted
        # name -> (engine, PEFT adapter name): PEFT keys modules by that name, so a folder name
        # with a dot, or one inside "lora_" (such as "a"), must not reach it
        self.loaded: dict[str, tuple[Engine, str]] = {}
        self.by_peft_type: dict[str, Engine] = {}  # the base copy holding adapters of a type
        self.own_engines: dict[str, Engine] = {}  # runs that cannot share the base

    def names(self) -> list[str]:
        return [self.base_name, *sorted(self.available())]

    def available(self) -> dict[str, Path]:
        """Run name -> run or artifact folder, from the configured folder and explicit runs."""
        found = dict(self.explicit)
        for child in self._listed():
            if child.name not in found and is_trained_run(child):
                found[child.name] = child
        return found

    def knows(self, name: str) -> bool:
        if name == self.base_name or name in self.loaded or name in self.own_engines:
            return True  # asked on every request: loaded names cost no folder reads
        return self._folder(name) is not None

    def load(self, name: str) -> None:
        """Make run `name` ready to answer; a no-op when loaded or the base."""
        if name == self.base_name or name in self.loaded or name in self.own_engines:
            return
        folder = self._folder(name)
        if folder is None:
            raise ModelError(f"no adapter named '{name}'")
        if not isinstance(self.engine, TransformersEngine):
            raise ModelError("adapters are switched per request with the transformers engine only")
        run = open_run(folder, self.base_cfg)
        if self._can_share_base(run):
            self._attach(name, run)
        else:
            model, tokenizer = run.load()
            self.own_engines[name] = engine_for(model, tokenizer, self.engine.batch_size)

    def _listed(self) -> Iterator[Path]:
        """Entries of the adapters folder with a servable name that stay inside it."""
        if self.root is None or not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if _NAME.fullmatch(child.name) and child.resolve().is_relative_to(self.root):
                yield child  # (a symlink out of the folder is left out)

    def _folder(self, name: str) -> Path | None:
        """The folder answering as `name`: only that listed entry is opened, not every run."""
        if name in self.explicit:
            return self.explicit[name]
        child = next((c for c in self._listed() if c.name == name), None)
        return child if child is not None and is_trained_run(child) else None

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Engine]:
        """The engine answering as `name` (the base: every shared adapter off)."""
        self.load(name)
        if name in self.own_engines:
            yield self.own_engines[name]
            return
        if name == self.base_name:
            model = self.engine.model
            off = model.disable_adapter() if hasattr(model, "peft_config") else None
            with off or contextlib.nullcontext():
                yield self.engine
            return
        engine, internal = self.loaded[name]
        engine.model.set_adapter(internal)
        yield engine

    def _can_share_base(self, run: TrainedRun) -> bool:
        """A PEFT adapter PEFT can switch, trained on this base, with this chat template."""
        if not (run.is_adapter and run.method.shares_base and run.task == "causal_lm"):
            return False
        if self.base_path is None or resolve_model(run.base_ref).path != self.base_path:
            return False
        own = run.load_tokenizer().chat_template
        return not own or own == self.engine.tokenizer.chat_template

    def _attach(self, name: str, run: TrainedRun) -> None:
        engine, internal = self._engine_for(run.method.peft_type), f"adapter_{len(self.loaded)}"
        model = engine.model
        with peft_quietly():
            if hasattr(model, "peft_config"):
                model.load_adapter(str(run.artifact), adapter_name=internal)
            else:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(run.artifact), adapter_name=internal)
                engine.model = model
        model.eval()
        self.loaded[name] = (engine, internal)

    def _engine_for(self, peft_type: str) -> Engine:
        """The base copy holding adapters of this PEFT type: the served base for the first type,
        a fresh copy for each other one."""
        if peft_type not in self.by_peft_type:
            engine = self.engine
            if self.by_peft_type:
                from tunesmith.models.load import load_model_and_tokenizer

                model = load_model_and_tokenizer(self.base_cfg)[0].eval()
                engine = TransformersEngine(model, self.engine.tokenizer, self.engine.batch_size)
            self.by_peft_type[peft_type] = engine
        return self.by_peft_type[peft_type]
