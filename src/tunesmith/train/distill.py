"""Knowledge distillation: a teacher model teaches the student (the run's model section).

mode logits (teacher and student share a vocabulary): the student matches the teacher's
softened token distributions on the response tokens, `kd_loss` below.
mode sequence (any teacher, a local model or an OpenAI-compatible endpoint): the teacher answers
the training prompts, its answers become an SFT dataset (teacher_data.jsonl in the run folder)
and the student trains on it with the normal SFT run.

Both report teacher/student agreement before and after training: the share of the teacher's
greedy answer tokens that the student predicts greedily when fed the same answer (teacher
forcing), on held-out prompts (data.eval, else the first training prompts).
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import Trainer

from tunesmith.config.schema import ModelConfig, RunConfig
from tunesmith.data.dataset import PackedCollator, SFTCollator, build_sft_data
from tunesmith.data.formats import load_conversations
from tunesmith.data.registry import Source, sft_sources
from tunesmith.data.render import IGNORE_INDEX, prompt_ids
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.runs.folder import RunFolder, is_main_process
from tunesmith.runs.trained import is_trained_run, load_for_inference
from tunesmith.train.arguments import training_arguments
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.forgetting import replay_sources
from tunesmith.train.recipe import Data, Job, Loaded, Probe, Recipe, TrainResult, train
from tunesmith.train.trainer import NO_LOSS_HOOKS, causal_lm_recipe, chat_data
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError

API_PREFIXES = ("http://", "https://", "openai")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    Logits are [batch, seq, vocab]; position t predicts token t + 1 (the causal shift), and
    only positions whose next label is not IGNORE_INDEX count (prompt and padding are out).
    Both terms are means over those tokens; T^2 keeps the KL gradients on the CE scale.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    student = student_logits[:, :-1][mask].float()
    teacher = teacher_logits[:, :-1][mask].float()
    ce = F.cross_entropy(student, targets[mask])
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    return alpha * ce + (1 - alpha) * temperature**2 * kl.mean()


class DistillTrainer(AtomicCheckpoints, Trainer):
    """The Trainer with the teacher's logits in the loss; the teacher never trains."""

    def __init__(self, *args, teacher, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.teacher.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs, use_cache=False).logits
        vocab = min(outputs.logits.shape[-1], teacher_logits.shape[-1])  # padded embeddings
        loss = kd_loss(
            outputs.logits[..., :vocab], teacher_logits[..., :vocab], labels,
            self.temperature, self.alpha,
        )  # fmt: skip
        return (loss, outputs) if return_outputs else loss


def run_distill(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    cfg = config.train.distill
    if cfg is None:
        raise ConfigError("train.distill: stage distill needs train.distill.teacher=<model or run>")
    if cfg.mode == "logits" and cfg.teacher.startswith(API_PREFIXES):
        raise ConfigError(
            "train.distill.teacher: an API teacher gives no logits; use train.distill.mode=sequence"
        )
    if cfg.mode == "sequence":
        return _run_sequence(config, run, resume)
    return _run_logits(config, run, resume)


# --- logit distillation ----------------------------------------------------------------


def _run_logits(config: RunConfig, run: RunFolder, resume: bool) -> TrainResult:
    return train(LOGITS, config, run, resume)


def _load_with_teacher(job: Job, quantization) -> Loaded:
    cfg = job.config.train.distill
    teacher, teacher_tok = load_teacher(cfg.teacher)
    student, tokenizer, resolved = load_model_and_tokenizer(job.config.model, quantization)
    check_same_vocab(teacher_tok, tokenizer, cfg.teacher, resolved.ref)
    return Loaded(student, tokenizer, resolved.ref, teacher, teacher_tok)


def _logits_data(job: Job) -> Data:
    # data.eval holds the agreement prompts, not an eval set
    config, run = job.config, job.run
    return Data.of(build_sft_data(job.sources, config.data, job.loaded.tokenizer, run.reject))


def _distill_trainer(job: Job) -> DistillTrainer:
    cfg, data = job.config.train, job.data
    collator = PackedCollator() if cfg.packing else SFTCollator(job.loaded.tokenizer.pad_token_id)
    return DistillTrainer(
        model=job.model,
        args=training_arguments(cfg, job.run, has_eval=False),
        train_dataset=data.train,
        data_collator=collator,
        teacher=job.loaded.reference,
        temperature=cfg.distill.temperature,
        alpha=cfg.distill.alpha,
    )


class _LogitsAgreement(Probe):
    """Agreement with the teacher of the student before and after training."""

    def __init__(self, job: Job):
        self.probe = Agreement(job.config, job.loaded.reference, job.loaded.reference_tokenizer)

    def on_base(self, job: Job) -> None:
        self.before = self.probe.measure(job.loaded.model, job.loaded.tokenizer)

    def on_end(self, job: Job, trainer) -> dict:
        after = self.probe.measure(trainer.model, job.loaded.tokenizer)
        _print_agreement(self.before, after)
        agreement = {"before": self.before, "after": after, "prompts": self.probe.size}
        teacher = job.config.train.distill.teacher
        return {"mode": "logits", "teacher": teacher, "agreement": agreement}


def load_teacher(ref: str):
    """(model, tokenizer) of a model reference, alias, or run / adapter folder."""
    if is_trained_run(ref):
        return load_for_inference(ref)
    return load_for_inference(model_cfg=ModelConfig(name_or_path=ref))


def check_same_vocab(teacher_tok, student_tok, teacher: str, student: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(
            f"train.distill.teacher: '{teacher}' and the student '{student}' have different "
            "tokenizer vocabularies, so their logits cannot be compared; use sequence-level "
            "distillation (train.distill.mode=sequence)"
        )


# --- sequence-level distillation -------------------------------------------------------


def _run_sequence(config: RunConfig, run: RunFolder, resume: bool) -> TrainResult:
    cfg = config.train.distill
    if not config.data.train and not config.data.dataset:
        raise ConfigError(
            "data.train: no prompts given for the teacher (e.g. data.train=[x.jsonl])"
        )
    teacher_file, dropped = run.root / "teacher_data.jsonl", []
    if not (resume and teacher_file.is_file()):  # a resumed run trains on the same answers
        conversations, _ = _read_conversations(sft_sources(config.data), config)
        answers = teacher_answers(cfg.teacher, [c[:-1] for c in conversations], cfg.max_new_tokens)
        dropped = write_sft_data(run, teacher_file, conversations, answers)
    answers = [Source([str(teacher_file)], "openai", {})]
    recipe = replace(SEQUENCE, read=lambda job: (answers, replay_sources(job.config.data)))
    result = train(recipe, config, run, resume)
    for reason, record in dropped:  # after the SFT run, which starts a fresh rejects file
        run.reject(str(teacher_file), 0, reason, record)

    probe = Agreement(config, *_probe_teacher(cfg.teacher))
    base, base_tok, _ = load_model_and_tokenizer(config.model)
    tuned, tuned_tok = load_for_inference(run.root)
    agreement = {
        "before": probe.measure(base, base_tok),
        "after": probe.measure(tuned, tuned_tok),
        "prompts": probe.size,
    }
    result.summary |= {"mode": "sequence", "teacher": cfg.teacher, "agreement": agreement}
    run.write_json("summary.json", result.summary)
    _print_agreement(agreement["before"], agreement["after"])
    return result


def teacher_answers(teacher: str, prompts: list[list[dict]], max_new_tokens: int) -> list:
    """The teacher's greedy replies (models/generate's Reply: text, finished)."""
    from tunesmith.runs.inference import make_client
    from tunesmith.utils.llm import replies_of

    spec = teacher if teacher.startswith(API_PREFIXES) else f"local:{teacher}"
    console.print(f"teacher {teacher}: answering {len(prompts)} prompts")
    return replies_of(make_client(spec), prompts, max_new_tokens, temperature=0.0)


def write_sft_data(
    run: RunFolder, path, conversations: list[list[dict]], answers: list
) -> list[tuple[str, dict]]:
    """openai-format records: the prompt turns and the teacher's answer. Cut or empty answers
    are left out and returned as (reason, record): a cut answer would teach stopping mid-way."""
    lines, dropped = [], []
    for conv, answer in zip(conversations, answers, strict=True):
        reason = "empty teacher answer" if not answer.text.strip() else None
        if not answer.finished:
            reason = "teacher answer cut by train.distill.max_new_tokens"
        if reason:
            dropped.append((reason, {"messages": conv[:-1], "answer": answer.text}))
            continue
        messages = [*conv[:-1], {"role": "assistant", "content": answer.text}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    if not lines:
        raise ConfigError(
            "train.distill: the teacher gave no usable answer (all empty or cut); "
            "raise train.distill.max_new_tokens"
        )
    run.write_text(path.name, "\n".join(lines) + "\n")
    return dropped


def _read_conversations(sources, config: RunConfig) -> tuple[list[list[dict]], dict]:
    conversations, stats = [], {}
    for source in sources:
        paths, fmt, columns = (
            source
            if isinstance(source, Source)
            else ([source], config.data.format, config.data.columns)
        )
        found, stats = load_conversations(paths, fmt, columns, config.data.on_error)
        conversations += [c.messages for c in found]
    return conversations[: config.data.max_samples], stats


def _probe_teacher(teacher: str):
    if teacher.startswith(API_PREFIXES):
        return None, None  # answers come from the endpoint; no local model to hold
    return load_teacher(teacher)


# --- agreement -------------------------------------------------------------------------


class Agreement:
    """Teacher answers to held-out prompts, generated once; `measure` scores a student.

    A local teacher's answers are kept as token ids, so a student with its vocabulary is
    scored on exactly the tokens the teacher chose (decoding and re-encoding can change them);
    other students, and API teachers, go through the answer text.
    """

    def __init__(self, config: RunConfig, teacher, teacher_tok, max_new_tokens: int = 32):
        cfg = config.train.distill
        sources = config.data.eval or sft_sources(config.data)
        conversations, _ = _read_conversations(sources, config)
        self.prompts = [c[:-1] for c in conversations[: cfg.agreement_prompts]]
        self.size = len(self.prompts)
        self.vocab = teacher_tok.get_vocab() if teacher_tok is not None else None
        self.ids: list[list[int]] = []
        if teacher is None:  # an API teacher
            replies = (
                teacher_answers(cfg.teacher, self.prompts, max_new_tokens) if self.prompts else []
            )
            self.texts = [r.text for r in replies]
        else:
            self.ids = [_greedy(teacher, teacher_tok, p, max_new_tokens) for p in self.prompts]
            self.texts = [teacher_tok.decode(ids, skip_special_tokens=True) for ids in self.ids]

    @torch.no_grad()
    def measure(self, student, tokenizer) -> float | None:
        """Share of the teacher's answer tokens the student predicts greedily (teacher forcing)."""
        same_vocab = self.vocab is not None and tokenizer.get_vocab() == self.vocab
        hits = total = 0
        student.eval()
        for i, prompt in enumerate(self.prompts):
            context = prompt_ids(tokenizer, prompt)
            target = (
                self.ids[i]
                if same_vocab
                else tokenizer(self.texts[i], add_special_tokens=False)["input_ids"]
            )
            if not target:
                continue
            ids = torch.tensor([context + target], device=student.device)
            logits = student(input_ids=ids).logits[0, len(context) - 1 : -1]
            hits += (logits.argmax(-1).cpu() == torch.tensor(target)).sum().item()
            total += len(target)
        return round(hits / total, 4) if total else None


def _greedy(model, tokenizer, prompt: list[dict], max_new_tokens: int) -> list[int]:
    context = prompt_ids(tokenizer, prompt)
    output = model.generate(
        input_ids=torch.tensor([context], device=model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return output[0, len(context) :].tolist()


def _print_agreement(before, after) -> None:
    if is_main_process():
        console.print(f"teacher/student token agreement: {before} before, {after} after training")


LOGITS = Recipe(
    name="distill",
    read=lambda job: sft_sources(job.config.data),
    has_eval=lambda job: False,
    load=_load_with_teacher,
    data=_logits_data,
    trainer=_distill_trainer,
    probes=lambda job: [_LogitsAgreement(job)],
    packs=True,
    speed=True,
    refuses=NO_LOSS_HOOKS,
)

# the sft run on the teacher's answers; `read` is set per run to the answers file
SEQUENCE = causal_lm_recipe("distill", lambda job: ([], []), chat_data)
