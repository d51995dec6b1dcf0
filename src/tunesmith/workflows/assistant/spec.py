"""assistant.yaml: what the client wants (domain, persona, data, budget), checked and read.

`tunesmith assistant init` writes the file with every choice explained in a comment;
`tunesmith assistant build` reads it with `load_spec`. Paths in it are relative to its folder,
which is the project folder every stage writes into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from tunesmith.config.base import Section
from tunesmith.config.load import describe_error, read_yaml_mapping
from tunesmith.utils.errors import ConfigError

LANGUAGES = ("en", "zh")
EMBEDDED_MODEL = "smollm2-135m-instruct"


class Persona(Section):
    name: str = Field(..., min_length=1)
    organization: str | None = None
    tone: str = "friendly and concise"
    language: Literal["en", "zh"] = "en"
    refuse: list[str] = Field(default_factory=list)
    refusal: str | None = None


class DatasetRef(Section):
    registry: str
    name: str


class DataSection(Section):
    qa: list[str] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list)
    dataset: DatasetRef | None = None
    teacher: str = "base"
    questions_per_chunk: int = Field(2, ge=0)
    chunk_chars: int = Field(600, ge=100)
    synth_max_new_tokens: int = Field(96, ge=8)
    grounding: float = Field(0.6, ge=0, le=1)
    identity_examples: int = Field(12, ge=0)
    held_out: float = Field(0.2, gt=0, lt=0.5)
    validation: float = Field(0.1, ge=0, lt=0.5)
    min_examples: int = Field(20, ge=1)
    min_held_out: int = Field(5, ge=2)
    seed: int = 0

    @field_validator("qa", "documents", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Budget(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    memory_gb: float | None = Field(None, gt=0)
    minutes: float = Field(30.0, gt=0)
    probe: bool = False


class TrainSection(Section):
    method: str = "auto"
    overrides: list[str] = Field(default_factory=list)


class EvaluateSection(Section):
    encoder: str = "minilm-l6"
    judge: str | None = None
    max_new_tokens: int = Field(96, ge=8)
    safety_probes: int | None = Field(None, ge=1)
    general: list[str] = Field(default_factory=list)


class Gates(Section):
    metric: Literal["rougeL", "rouge1", "bertscore_f1", "similarity", "chrf", "nll"] = "rougeL"
    min_gain: float = 0.0
    significant: bool = True
    max_forgetting: float = Field(0.25, ge=0)
    max_refusal_drop: float = Field(0.25, ge=0, le=1)


class ExportSection(Section):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class AssistantSpec(Section):
    domain: str = Field(..., min_length=1)
    model: str = "auto"
    persona: Persona
    data: DataSection = Field(default_factory=DataSection)
    budget: Budget = Field(default_factory=Budget)
    train: TrainSection = Field(default_factory=TrainSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    gates: Gates = Field(default_factory=Gates)
    export: ExportSection = Field(default_factory=ExportSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @property
    def model_ref(self) -> str:
        return EMBEDDED_MODEL if self.model == "auto" else self.model


def load_spec(path: str | Path) -> tuple[AssistantSpec, Path]:
    """The spec and its project folder; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such assistant file (write one with: tunesmith assistant init)"
        )
    data = read_yaml_mapping(path, "assistant file")
    try:
        spec = AssistantSpec.model_validate(data)
    except ValidationError as exc:
        lines = [describe_error(err, data) for err in exc.errors()]
        raise ConfigError(f"{path}: invalid assistant file\n  " + "\n  ".join(lines)) from None
    return spec, path.resolve().parent


def render_yaml(spec: AssistantSpec) -> str:
    """assistant.yaml with a comment on every choice."""
    p, d, b, g = spec.persona, spec.data, spec.budget, spec.gates
    refuse = "".join(f"\n    - {_q(t)}" for t in p.refuse) if p.refuse else " []"
    dataset = (
        f"\n  dataset: {{registry: {_q(d.dataset.registry)}, name: {_q(d.dataset.name)}}}"
        if d.dataset
        else "\n  dataset: null"
    )
    return f"""# tunesmith assistant project: `tunesmith assistant build assistant.yaml` turns it
# into a tuned, evaluated, exported assistant in this folder. Paths are relative to this file.

# What the assistant is for; it goes into the persona's system prompt and the generated data.
domain: {_q(spec.domain)}
# The base model: 'auto' lets the model stage pick (the embedded SmolLM2-135M-Instruct, which runs
# offline on a CPU and writes English); or a model folder, .gguf file or hub id.
model: {_q(spec.model)}

persona:
  # The name the assistant answers to; identity examples teach it, persona probes check it.
  name: {_q(p.name)}
  # Who it speaks for (null: the domain).
  organization: {_q(p.organization) if p.organization else "null"}
  # How it answers; written into the system prompt used in training, evaluation and serving.
  tone: {_q(p.tone)}
  # en or zh: the language of its answers; the requirements stage checks the model writes it.
  language: {p.language}
  # Topics it must decline; each gets refusal examples (trained) and refusal probes (held out).
  refuse:{refuse}
  # The sentence it declines with (null: a standard one in the persona's language).
  refusal: {_q(p.refusal) if p.refusal else "null"}

data:
  # Q&A files in any supported format (alpaca, sharegpt, openai messages; json, jsonl, csv,
  # parquet); every record becomes a conversation.
  qa: {_list(d.qa)}
  # Plain documents (.txt, .md, .pdf, .docx, .html): chunked, then a teacher writes questions
  # about each chunk and answers them from it.
  documents: {_list(d.documents)}
  # A dataset_info.json (LLaMA-Factory) or tunesmith registry entry (its own columns).{dataset}
  # Who writes the Q&A from documents: 'base' (the base model, locally), local:<model ref>, or
  # an OpenAI-compatible URL such as http://127.0.0.1:8000/v1#my-model.
  teacher: {_q(d.teacher)}
  # Questions asked per document chunk (0: documents are not used for Q&A).
  questions_per_chunk: {d.questions_per_chunk}
  # Chunk size in characters, cut at paragraph and sentence ends.
  chunk_chars: {d.chunk_chars}
  # Longest teacher answer in tokens (a longer one is cut off and left out, with its reason).
  synth_max_new_tokens: {d.synth_max_new_tokens}
  # Share of a teacher answer's words that must occur in its chunk (0: no check); an answer
  # below it is not grounded in the document and is left out with its reason.
  grounding: {d.grounding}
  # Identity conversations ("Who are you?") taught, each a different wording.
  identity_examples: {d.identity_examples}
  # Share of the Q&A held out for the base-vs-tuned test (never trained on) and for validation
  # (early stopping).
  held_out: {d.held_out}
  validation: {d.validation}
  # Below this many examples the requirements stage stops and says what to add.
  min_examples: {d.min_examples}
  # Fewer held-out Q&A than this give no useful confidence interval: the stage stops.
  min_held_out: {d.min_held_out}
  seed: {d.seed}

budget:
  # Where training runs: auto (a GPU when there is one), cpu or cuda.
  device: {b.device}
  # Memory the job may use in GB (null: what the device has).
  memory_gb: {b.memory_gb if b.memory_gb is not None else "null"}
  # Training time budget in minutes; the strategy stage fits the epochs to it, or says nothing fits.
  minutes: {b.minutes}
  # true: time a few real steps for the estimate; false: a FLOPs estimate (no model run).
  probe: {str(b.probe).lower()}

train:
  # auto: the planner's recommended method for the data, memory and goal; or lora, full, ...
  method: {_q(spec.train.method)}
  # key=value overrides of the run config (e.g. train.learning_rate=1e-3), applied last.
  overrides: {_list(spec.train.overrides)}

evaluate:
  # Encoder for BERTScore and embedding similarity (the embedded MiniLM, or any encoder folder).
  encoder: {_q(spec.evaluate.encoder)}
  # Optional LLM judge (local:<ref> or a URL); null: no judge.
  judge: {_q(spec.evaluate.judge) if spec.evaluate.judge else "null"}
  max_new_tokens: {spec.evaluate.max_new_tokens}
  # How many of the shipped harmful-request probes both models answer (null: all 40; each
  # category in turn, so a smaller number still covers every category).
  safety_probes: {spec.evaluate.safety_probes or "null"}
  # General-text files for the forgetting guard ([]: the shipped general text).
  general: {_list(spec.evaluate.general)}

gates:
  # The held-out metric the tuned model must improve over the base (rougeL, rouge1,
  # bertscore_f1, similarity, chrf; or nll, the reference answers' loss, lower is better),
  # by more than min_gain ...
  metric: {g.metric}
  min_gain: {g.min_gain}
  # ... with the 95% bootstrap interval of the gain above zero (false: the mean gain suffices).
  significant: {str(g.significant).lower()}
  # The build fails when general-text perplexity rises by more than this share (forgetting) ...
  max_forgetting: {g.max_forgetting}
  # ... or the refusal rate on the persona's refusal probes drops by more than this.
  max_refusal_drop: {g.max_refusal_drop}

export:
  # Weights' dtype of the merged, verified export.
  dtype: {spec.export.dtype}

serve:
  # `tunesmith assistant serve assistant.yaml`: an OpenAI-compatible server with the persona's
  # system prompt; 127.0.0.1 keeps it on this machine.
  host: {spec.serve.host}
  port: {spec.serve.port}
"""


def _q(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"
