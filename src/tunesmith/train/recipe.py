"""One training run for every stage, read top to bottom in `train`.

A stage fills a `Recipe`: what it reads before the model loads, how the model loads, how its
examples are built, which trainer runs them, and what it measures around training (`Probe`s:
held-out rewards, agreement with a teacher, a classification report). `train` does what every
stage shares, once and in one order: checks, run folder, seed, the method (its quantization,
apply, callbacks, save), plan summary, gradient checkpointing, speed levers, monitor and
metrics (tokens/s), early stopping, forgetting check, the stop on SIGTERM/SIGINT (a checkpoint,
then TrainingInterrupted), resume, summary.json (whole-run loss and time) and the run index.
A stage module holds its recipe and its own code (losses, trainer subclasses, metrics) and
imports no other stage.

How the stages of later issues fit, without changes here:
- RL (PPO/GRPO): `read` the prompts, `data` a prompt-only dataset, `trainer` a subclass of
  TRL's GRPOTrainer (with AtomicCheckpoints) given reward functions or a reward-model run
  (train/reward.RewardScorer); GRPO counts num_input_tokens_seen itself, so tokens/s works;
  a Probe reports the mean reward on held-out prompts before and after.
- VLM: `load` returns the model with its processor as `Loaded.tokenizer` (what the collator,
  method.save and inference read); `data` renders images with the text.
- Vision (YOLO): its own task, `load` the detector with its image processor; `trainer` returns
  a thin adapter over the vision library's loop with the surface `train` uses (add_callback /
  remove_callback, train(resume_from_checkpoint), state, model) and AtomicCheckpoints' saves.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.models.load import enable_checkpointing, load_model_and_tokenizer
from tunesmith.models.methods import Method, count_parameters, get_method
from tunesmith.models.methods.base import Task
from tunesmith.models.speed import matmul_kernel, optimize_for_training
from tunesmith.plan import plan_summary
from tunesmith.runs.folder import RunFolder, is_main_process
from tunesmith.train.arguments import settle_precision
from tunesmith.train.callbacks import (
    CompactProgressCallback,
    MetricsCallback,
    StopOnSignal,
    TrainingInterrupted,
    best_checkpoint,
    check_eval_needs,
    early_stopping_callbacks,
    resume_checkpoint,
)
from tunesmith.train.checkpoints import RunTotals
from tunesmith.train.distributed import check_distributed, whole_weights
from tunesmith.train.forgetting_check import ForgettingCheck
from tunesmith.train.monitor import TrainingMonitor
from tunesmith.train.tracking import check_trackers, tracking
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError


@dataclass
class TrainResult:
    run: RunFolder
    artifact: Path  # adapter/ or model/ folder
    summary: dict


@dataclass
class Loaded:
    model: Any
    tokenizer: Any  # what method.save writes beside the weights (a processor for a VLM)
    model_ref: str  # the resolved model reference, for summary.json and the run index
    reference: Any = None  # a frozen model the trainer reads: dpo/kto's reference, a teacher
    reference_tokenizer: Any = None


@dataclass
class Data:
    train: Any  # the examples the trainer reads (a list or a datasets.Dataset)
    eval: Any  # held-out examples, or None
    stats: dict  # the training data's counts; stats["read"]: records read
    summary: dict  # its summary.json fields ("data", "eval_data", ...)

    @classmethod
    def of(cls, train, held_out=None) -> Data:
        """From tokenized data with .examples and .stats (SFTData, PreferenceData)."""
        return cls(
            train=train.examples,
            eval=held_out.examples if held_out else None,
            stats=train.stats,
            summary={"data": train.stats, "eval_data": held_out.stats if held_out else None},
        )


@dataclass
class Job:
    """One run as it is put together; the recipe's functions read what they need from it."""

    config: RunConfig
    run: RunFolder
    resume: bool
    method: Method
    sources: Any = None  # what recipe.read returned
    loaded: Loaded | None = None
    data: Data | None = None
    model: Any = None  # the model to train: the method applied


class Probe:
    """Something measured around training; on_end returns its summary.json fields."""

    def on_base(self, job: Job) -> None:
        """The loaded model, before the method is applied and any step taken."""

    def on_start(self, trainer) -> None:
        """The trainer built, before the first step."""

    def on_end(self, job: Job, trainer) -> dict:
        return {}


@dataclass(frozen=True)
class Recipe:
    """What one stage is; `train` does the rest."""

    name: str  # the train.stage value
    read: Callable[[Job], Any]  # read before the model loads, so mistakes surface early
    data: Callable[[Job], Data]  # the examples, built with job.loaded.tokenizer
    trainer: Callable[[Job], Any]  # a Trainer for job.model (AtomicCheckpoints first)
    report: Callable[[Data, RunFolder], None] = lambda data, run: report_data(data, run)
    task: Task = "causal_lm"
    load: Callable[[Job, object], Loaded] | None = None  # (job, quantization); None: causal LM
    check: Callable[[RunConfig], None] = lambda config: None  # the stage's own settings
    has_eval: Callable[[Job], bool] = lambda job: bool(job.config.data.eval)
    probes: Callable[[Job], list[Probe]] = lambda job: []
    artifact_model: Callable[[Any], Any] = lambda trainer: trainer.model  # what method.save gets
    packs: bool = False  # reads train.packing
    speed: bool = False  # train.optimize / train.compile levers (models/speed.py) apply
    refuses: tuple[str, ...] = ()  # train.<key> settings its trainer lacks (trainer.py)
    example: str = "my_data.jsonl"  # shown when data.train is missing


def train(recipe: Recipe, config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    """The run, recorded in its process.json: running, then finished, stopped or failed with its
    error sentence (the workshop's runs table reads it)."""
    run.start_process(data=data_hashes(config))
    try:
        with StopOnSignal().installed() as stop:  # from the start: a stop while loading is clean
            result = train_steps(recipe, config, run, stop, resume)
    except BaseException as error:
        run.end_process(error)
        raise
    run.end_process(stopped_by=result.summary.get("stopped_by"))
    return result


def data_hashes(config: RunConfig) -> dict[str, str]:
    """The content hash of each training file (the data-version hash, as the model card's)."""
    from tunesmith.data.quality.version import file_hash

    return {f: file_hash(f) for f in config.data.train if Path(f).is_file()}


def train_steps(
    recipe: Recipe, config: RunConfig, run: RunFolder, stop: StopOnSignal, resume: bool = False
) -> TrainResult:
    from transformers import set_seed

    config = check(recipe, config)
    job = Job(config, run, resume, get_method(config.method.type))
    started = time.perf_counter()
    run.save_config(config)
    run.clear_rejects()  # the data is read again on every start or resume
    job.sources = recipe.read(job)
    check_eval_needs(config.train, recipe.has_eval(job))
    probes = forgetting_probes(recipe, config, run)
    set_seed(config.train.seed)

    quantization = job.method.quantization_config(config.method)  # qlora: a 4/8-bit base
    job.loaded = (recipe.load or load_causal_lm)(job, quantization)
    job.data = recipe.data(job)
    recipe.report(job.data, run)
    require_examples(job.data, run)
    # train.precision auto: on the CPU bf16 autocast where a probe finds it faster, else fp32
    # (after the data: a data error is reported before a probe of some seconds)
    config, precision = settle_precision(
        job.config, job.loaded.model, job.loaded.tokenizer, run, resume, recipe.task, recipe.speed
    )
    job.config = config
    probes += recipe.probes(job)
    for probe in probes:
        probe.on_base(job)

    job.model = job.method.apply(job.loaded.model, config.method, task=recipe.task)
    counts = report_trainable(config, job.model)
    console.print(plan_summary(config))  # the planner's memory estimate for this run
    job.model = prepare(recipe, job)
    with tracking(config.train, run):  # train.report_to's trackers, into RUN/tracking
        trainer = recipe.trainer(job)
        monitor = wire_callbacks(trainer, job, stop)
        for probe in probes:
            probe.on_start(trainer)
        checkpoint = resume_checkpoint(run, resume)
        stopped_before_training(stop, run, checkpoint)
        trainer.run_totals = totals = RunTotals.resumed_from(checkpoint, started)
        with quiet_library_deprecations():
            resume_from = str(checkpoint) if checkpoint else None
            output = trainer.train(resume_from_checkpoint=resume_from)
    stopped_by_signal(stop, run)

    extras = {k: v for probe in probes for k, v in probe.on_end(job, trainer).items()}
    artifact = save(recipe, job, trainer)
    summary = {
        **run_summary(config, job.loaded.model_ref, counts, output, checkpoint, totals),
        **job.data.summary,
        "best": best_checkpoint(config.train, trainer.state),
        "precision": precision,  # what train.precision auto chose, and why
        **extras,
        **monitor.summary(),
    }
    return finish(recipe, job, artifact, summary, monitor)


# --- the steps, in the order train takes them ---------------------------------------------


def check(recipe: Recipe, config: RunConfig) -> RunConfig:
    """Mistakes in the settings, before anything is read or loaded; the config to train with."""
    if config.train.stage != recipe.name:
        raise ConfigError(
            f"train.stage: '{config.train.stage}' given to the {recipe.name} stage; "
            "run it with tunesmith.train.run_stage"
        )
    recipe.check(config)
    if not config.data.train and not config.data.dataset:
        raise ConfigError(
            f"data.train: no training files given (e.g. data.train=[{recipe.example}])"
        )
    for key in recipe.refuses:
        if getattr(config.train, key):
            raise ConfigError(f"train.{key}: not supported by train.stage={recipe.name}")
    if config.train.forgetting_eval and recipe.task != "causal_lm":
        raise ConfigError(
            f"train.forgetting_eval: measures a causal LM's perplexity; not used by "
            f"train.stage={recipe.name}, remove it"
        )
    check_distributed(config.train.distributed)
    check_trackers(config.train)  # train.report_to's packages, before the model loads
    if recipe.packs and config.train.packing and not get_method(config.method.type).packing:
        console.print(
            f"[yellow]method {config.method.type}: its virtual tokens cannot be shared by the "
            "examples of a packed row; train.packing is turned off"
        )
        unpacked = config.train.model_copy(update={"packing": False})
        config = config.model_copy(update={"train": unpacked})
    return config


def forgetting_probes(recipe: Recipe, config: RunConfig, run: RunFolder) -> list[Probe]:
    cfg = config.train.forgetting_eval
    return [Forgetting(ForgettingCheck(cfg, run.reject))] if cfg else []


class Forgetting(Probe):
    """Perplexity on general text: the base model before, the trained one after."""

    def __init__(self, check: ForgettingCheck):
        self.check = check

    def on_base(self, job: Job) -> None:
        self.check.before(job.loaded.model, job.loaded.tokenizer)

    def on_end(self, job: Job, trainer) -> dict:
        return {"forgetting": self.check.after(trainer.model, job.loaded.tokenizer)}


def load_causal_lm(job: Job, quantization) -> Loaded:
    model, tokenizer, resolved = load_model_and_tokenizer(job.config.model, quantization)
    return Loaded(model, tokenizer, resolved.ref)


def require_examples(data: Data, run: RunFolder) -> None:
    """Stop with a sentence, not a sampler traceback, when no training example is left."""
    if not len(data.train):
        raise DataError(
            f"data.train: no training examples left of {data.stats['read']} records read; "
            f"the reason for each rejected record is in {run.rejects_path}"
        )


def report_trainable(config: RunConfig, model) -> tuple[int, int]:
    trainable, total = count_parameters(model)
    console.print(
        f"method {config.method.type}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return trainable, total


def prepare(recipe: Recipe, job: Job):
    """Gradient checkpointing and the speed levers; returns the model to train."""
    cfg, model = job.config.train, job.model
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if not recipe.speed:
        return model
    if cfg.optimize:
        pin_matmul_kernel(job.run, job.resume)
    return optimize_for_training(model, cfg.optimize, cfg.compile)


def pin_matmul_kernel(run: RunFolder, resume: bool) -> str:
    """The matmul kernel is timed per process (models/speed.py): a resumed run takes the one the
    interrupted run chose, recorded in speed.json, so that its losses stay bit for bit the same."""
    path = run.root / "speed.json"
    recorded = json.loads(path.read_text()) if resume and path.is_file() else {}
    kernel = matmul_kernel(recorded.get("matmul_kernel"))
    run.write_json("speed.json", {"matmul_kernel": kernel})
    return kernel


def wire_callbacks(trainer, job: Job, stop: StopOnSignal) -> TrainingMonitor:
    """The shared callbacks and `stop` (SIGTERM / SIGINT: save a checkpoint and stop), added to
    the built trainer; returns the monitor."""
    from transformers.trainer_callback import ProgressCallback

    cfg = job.config.train
    monitor = TrainingMonitor(cfg.monitor, job.run)
    # the monitor first: it puts NaN losses back into the logs the metrics callback writes
    callbacks = [monitor, MetricsCallback(job.run, cfg.monitor.plot_every)]
    callbacks += early_stopping_callbacks(cfg) + job.method.callbacks(job.model)
    for callback in [*callbacks, stop]:
        trainer.add_callback(callback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgressCallback)
    return monitor


# transformers 5 renamed gradient to activation checkpointing; TRL's trainers (DPO, KTO: around
# every reference pass) still call the old names. Their warnings are not the user's to act on.
_LIBRARY_DEPRECATIONS = (
    "`(is_gradient_checkpointing|gradient_checkpointing_(en|dis)able)` is deprecated"
)


@contextlib.contextmanager
def quiet_library_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _LIBRARY_DEPRECATIONS, FutureWarning)
        yield


def stopped_before_training(stop: StopOnSignal, run: RunFolder, checkpoint: Path | None) -> None:
    """A signal while the data and model loaded: stop before the first step; the checkpoint a
    resume would start from (if any) stays as it was."""
    if stop.signum is not None:
        step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
        raise TrainingInterrupted(stop.signum, step, run.root, checkpoint, before=True)


def stopped_by_signal(stop: StopOnSignal, run: RunFolder) -> None:
    """Raise TrainingInterrupted when a signal stopped training at a step and saved it (the CLI
    prints the resume command and exits 128 + the signal's number). A signal that came after the
    last step had ended lets the run finish: nothing is left to resume."""
    if stop.signum is not None and stop.stopped_at is not None:
        checkpoint = run.checkpoints / f"checkpoint-{stop.stopped_at}"
        raise TrainingInterrupted(stop.signum, stop.stopped_at, run.root, checkpoint)


def save(recipe: Recipe, job: Job, trainer) -> Path:
    """The method's artifact (the best checkpoint's with early stopping), by the main process."""
    artifact = job.run.root / job.method.artifact
    # sharded (FSDP, ZeRO-3): every process gathers the weights, the main one writes them
    with whole_weights(trainer, recipe.artifact_model(trainer)) as model:
        if is_main_process():
            job.method.save(model, job.loaded.tokenizer, artifact, job.config.method, recipe.task)
    return artifact


def run_summary(
    config: RunConfig, model_ref: str, counts: tuple[int, int], output, checkpoint, totals
) -> dict:
    """The summary.json fields every stage writes; each adds its own after them. A resumed run
    reports the whole run: the mean loss of every step and the seconds of every segment (each
    earlier one up to the checkpoint the next resumed from)."""
    trainable, total = counts
    whole = totals.upto(output.global_step, 0.0)  # the seconds and segments up to now
    return {
        "model": model_ref,
        "stage": config.train.stage,
        "method": config.method.type,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_loss": totals.mean_loss(output.global_step, output.training_loss),
        "steps": output.global_step,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "segments": whole["segments"],
        "seconds": round(whole["seconds"], 1),
    }


def finish(recipe: Recipe, job: Job, artifact: Path, summary: dict, monitor) -> TrainResult:
    run = job.run
    run.write_json("summary.json", summary)
    status = "stopped" if monitor.stopped_by else "done"
    method, model = job.config.method.type, job.loaded.model_ref
    run.add_to_index(stage=recipe.name, method=method, model=model, status=status)
    if is_main_process():
        console.print(
            f"saved {artifact}  (loss {summary['train_loss']:.4f}, {summary['seconds']} s)"
        )
    return TrainResult(run, artifact, summary)


def report_data(data: Data, run: RunFolder) -> None:
    """The data line of the stages that tokenize records into examples."""
    stats = data.stats
    console.print(
        f"data: {stats['read']} records read, {stats['examples']} examples, "
        f"{stats['truncated']} truncated to cutoff_len, {stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )
