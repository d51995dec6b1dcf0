"""Fine-tuning methods: each module registers one `Method` form (see base.py).

Importing this package registers them all; `get_method(name)` returns one. Adding a method:
one config class in config/methods.py (and in its MethodConfig union), one module here
imported below.
"""

from __future__ import annotations

from tunesmith.models.methods import (  # noqa: F401  (importing registers the method)
    adapter,
    freeze,
    full,
    hybrid,
    ia3,
    lora,
    prefix,
    prompt,
    ptuning,
    qlora,
)
from tunesmith.models.methods._peft import HEADS, virtual_tokens
from tunesmith.models.methods.base import (
    MARKER,
    METHODS,
    Method,
    Task,
    count_parameters,
    get_method,
    method_for_peft_type,
    read_marker,
)

__all__ = [
    "HEADS",
    "MARKER",
    "METHODS",
    "Method",
    "Task",
    "count_parameters",
    "get_method",
    "method_for_peft_type",
    "read_marker",
    "virtual_tokens",
]
