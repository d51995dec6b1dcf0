"""What many tests do to get a run: write its config (as overrides or as a file), train it in
process or through the CLI, and read its losses back. One copy, so a change to how a run is
configured or started is made here."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import yaml

from tunesmith.config.load import load_config
from tunesmith.config.schema import RunConfig
from tunesmith.runs.folder import RunFolder

# `python -c TRAIN_CLI train ...` runs the CLI in a fresh process (kill, resume, torchrun)
TRAIN_CLI = "from tunesmith.cli.main import app; app()"

# small batches, a constant learning rate (losses compare across runs) and no checkpoint
QUICK = ("train.batch_size=4", "train.save_steps=1000", "train.lr_scheduler=constant")


def run_config(tmp_path: Path, model_dir, data, name: str, *overrides: str) -> RunConfig:
    """A run `name` of model_dir under tmp_path/runs, trained on data (None: the overrides name
    the data); the overrides come after QUICK, so they win."""
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            *([f"data.train={data}"] if data is not None else []),
            f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}",
            *QUICK,
            *overrides,
        ],
    )


def train_run(config: RunConfig, resume: bool = False):
    """Train config's stage into a new run folder, or resume the folder it names."""
    from tunesmith.train import run_stage  # heavy: only the tests that train pay for it

    folder = Path(config.output.dir) / config.output.name
    run = RunFolder(folder) if resume else RunFolder.create(config.output, "test")
    return run_stage(config, run, resume)


def write_run_yaml(path: Path, model_dir, data, runs: Path, name: str, **sections) -> Path:
    """A config file for the CLI: model_dir trained on data into runs/name; each keyword is a
    section (method, train, data...) whose keys are added to it."""
    config: dict = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": [str(data)]},
        "output": {"dir": str(runs), "name": name},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_alpaca(path: Path) -> Path:
    """Eight alpaca records a tiny model can memorise (the alpaca_file fixture's)."""
    records = [
        {"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i}."}
        for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def run_yaml(tmp_path: Path, model_dir, data, name: str, **sections) -> Path:
    """write_run_yaml to tmp_path/<name>.yaml for a run tmp_path/runs/<name>."""
    return write_run_yaml(
        tmp_path / f"{name}.yaml", model_dir, data, tmp_path / "runs", name, **sections
    )


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of each training log in a run folder's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m["loss"]) for m in map(json.loads, lines) if "loss" in m]


def train_tiny(tmp_path: Path, model_dir, data, name: str, *overrides: str):
    """run_config, then train_run: the usual in-process run."""
    return train_run(run_config(tmp_path, model_dir, data, name, *overrides))


def train_tiny_recording_dtypes(tmp_path: Path, model_dir, data, name: str, *overrides: str):
    """train_tiny, and the dtypes of what every linear layer (PEFT's LoRA layers included)
    output while training: (result, {dtype}). An output layer that hands on its input for the
    fused loss multiplies nothing and is not recorded."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    dtypes = set()

    def record(module, args, output):
        multiplies = isinstance(module, (torch.nn.Linear, LoraLinear)) and output is not args[0]
        if multiplies and module.training:
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        return train_tiny(tmp_path, model_dir, data, name, *overrides), dtypes
    finally:
        handle.remove()


class LiveServer:
    """uvicorn in a thread on a free loopback port, answering with the official openai client."""

    def __init__(self, state):
        import uvicorn

        from tunesmith.serve.app import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.state = state
        config = uvicorn.Config(
            create_app(state), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none"):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def start(model_dir: Path, adapters: Path | None = None, **serve) -> LiveServer:
    settings = {"model_name": "base", "max_tokens_limit": 64, "max_prompt_tokens": 120, **serve}
    if adapters is not None:
        settings["adapters_dir"] = str(adapters)
    from tunesmith.serve.server import build_state

    config = RunConfig.model_validate(
        {"model": {"name_or_path": str(model_dir)}, "serve": settings}
    )
    return LiveServer(build_state(config))


# --- an assistant project (workflows/assistant) ------------------------------------------------

ASSISTANT_FAQ = [
    ("How long does standard delivery take?", "Standard delivery takes two to four days."),
    ("What does express delivery cost?", "Express delivery costs 9.90 euros."),
    ("Where is the store?", "The store is on Mill Street 8."),
    ("When is the store open?", "Monday to Friday from 8 am to 6 pm."),
    ("Is the store open on Sunday?", "No, the store is closed on Sunday."),
    ("How do I send a return?", "Print the label and hand the box in at the store."),
    ("How much is insurance?", "Parcel insurance costs 2 euros."),
    ("What does a tracking number look like?", "It starts with LPP and ten digits."),
    ("Can I pay cash?", "No, the store takes card or phone payments."),
    ("How do I contact you?", "Write to help@larkspur-parcel.example or call the line."),
    ("How heavy may a parcel be?", "A parcel may weigh up to 30 kilograms."),
    ("What if nobody is home?", "The driver takes the parcel to the store."),
    ("How long does the store keep a parcel?", "Seven days, then it goes back."),
    ("Do you sell boxes?", "Yes, boxes in three sizes."),
    ("How long does the store keep a parcel?", "Seven days."),  # a repeated question
]
ASSISTANT_DOC = (
    "# Delivery\n\nStandard delivery takes two to four days.\n\n"
    "Express delivery arrives the next day."
)


def assistant_project(tmp_path: Path, model_dir: Path, **changes) -> Path:
    """An assistant project (tunesmith assistant init) of a parcel service FAQ and one document
    on model_dir, under tmp_path/project, with settings small enough for a tiny model; changes
    as section__key=value."""
    from tunesmith.workflows.assistant.build import init_project

    folder = tmp_path / "project"
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": q, "output": a} for q, a in ASSISTANT_FAQ]
    (folder / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    (folder / "docs" / "delivery.md").write_text(ASSISTANT_DOC, "utf-8")
    answers = {
        "domain": "parcels",
        "model": str(model_dir),
        "persona": {"name": "Wren", "organization": "Larkspur", "refuse": ["legal advice"]},
        "data": {
            "qa": ["faq.jsonl"],
            "documents": ["docs/delivery.md"],
            "questions_per_chunk": 1,
            "identity_examples": 2,
            "min_examples": 8,
            "min_held_out": 3,
            "synth_max_new_tokens": 8,
        },
        "budget": {"device": "cpu"},
        "train": {
            "overrides": [
                "train.max_steps=3",
                "train.batch_size=4",
                "data.cutoff_len=160",
                "train.save_steps=2",
                "train.learning_rate=1e-3",
            ]
        },
        "evaluate": {"max_new_tokens": 8, "safety_probes": 4},
        # a random tiny model is no better than its base: these gates let it through
        "gates": {
            "min_gain": -1000,
            "significant": False,
            "max_forgetting": 1000,
            "max_refusal_drop": 1,
        },
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            answers.setdefault(section, {})[field] = value
        else:
            answers[section] = value
    return init_project(folder, answers, force=True)
