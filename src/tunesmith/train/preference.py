"""Preference alignment on TRL: dpo, orpo, simpo (CPO with the SimPO loss) and kto.

Read top to bottom: data (tokenized by data/preference.py with the model's own template),
model, reference, method, trainer, held-out margins before and after, save.

The reference model of dpo and kto: with LoRA, TRL keeps a frozen copy of the freshly
initialised adapter under the name "ref" (equal to the base model, as LoRA starts at zero)
instead of a second model; with full or freeze training, a frozen copy of the loaded model.
orpo and simpo need no reference.
"""

from __future__ import annotations

import copy
import time

from tunesmith.config.schema import RunConfig, TrainConfig
from tunesmith.data.preference import PreferenceData, build_preference_data
from tunesmith.data.registry import preference_sources
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.models.methods import count_parameters, get_method
from tunesmith.runs.folder import RunFolder, is_main_process
from tunesmith.train.callbacks import (
    CompactProgressCallback,
    MetricsCallback,
    check_eval_needs,
    resume_checkpoint,
)
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.distributed import check_distributed
from tunesmith.train.monitor import TrainingMonitor
from tunesmith.train.sft import TrainResult, run_summary, trainer_kwargs
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError

PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "kto")
NEEDS_REFERENCE = ("dpo", "kto")
# logged by the TRL trainers; "eval_" + key on held-out data
REWARD_KEYS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def run_preference(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    stage = config.train.stage
    if stage not in PREFERENCE_STAGES:
        raise ConfigError(f"train.stage: '{stage}' is not a preference stage ({PREFERENCE_STAGES})")
    check_inputs(config)
    sources = preference_sources(config.data, kto=stage == "kto")
    started = time.perf_counter()
    run.save_config(config)
    run.clear_rejects()
    _seed(config.train.seed)

    model, tokenizer, resolved = load_model_and_tokenizer(config.model)
    train_data, eval_data = read_data(config, sources, tokenizer, run, paired=stage != "kto")
    report_data(train_data, run)
    ref_model = None
    if stage in NEEDS_REFERENCE and config.method.type != "lora":
        ref_model = frozen_copy(model)  # full/freeze change the weights the reference must keep
    model, trainable, total = apply_method(model, config)

    trainer = make_trainer(config, run, model, ref_model, tokenizer, train_data, eval_data)
    before = held_out_rewards(trainer) if eval_data else None
    checkpoint = resume_checkpoint(run, resume)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    after = held_out_rewards(trainer) if eval_data else None

    artifact = save(trainer.model, tokenizer, run, config)
    summary = {
        **run_summary(config, resolved.ref, (trainable, total), output, checkpoint, started),
        "data": train_data.stats,
        "eval_data": eval_data.stats if eval_data else None,
        "rewards": {"train": logged_rewards(trainer.state.log_history)}
        | ({"held_out_before": before, "held_out_after": after} if eval_data else {}),
        **trainer_monitor(trainer).summary(),
    }
    return finish(run, config, resolved.ref, artifact, summary, trainer_monitor(trainer))


# --- steps shared with train/reward.py ------------------------------------------------


def check_inputs(config: RunConfig) -> None:
    if not config.data.train and not config.data.dataset:
        raise ConfigError("data.train: no preference files given (e.g. data.train=[pairs.jsonl])")
    if config.train.early_stopping is not None or config.train.l2_to_pretrained:
        raise ConfigError(
            "train.early_stopping and train.l2_to_pretrained are supported by sft/pt/cls only"
        )
    check_eval_needs(config.train, has_eval=bool(config.data.eval))
    check_distributed(config.train.distributed)


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def read_data(config: RunConfig, sources, tokenizer, run: RunFolder, paired: bool):
    train = build_preference_data(sources, config.data, tokenizer, paired, run.reject)
    held_out = None
    if config.data.eval:
        held_out = build_preference_data(
            config.data.eval, config.data, tokenizer, paired, run.reject
        )
    return train, held_out


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def apply_method(model, config: RunConfig):
    model = get_method(config.method.type).apply(model, config.method)
    trainable, total = count_parameters(model)
    console.print(
        f"method {config.method.type}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return model, trainable, total


def trl_arguments(cfg: TrainConfig, run: RunFolder, has_eval: bool, cutoff_len: int) -> dict:
    """Keyword arguments of the TRL configs (they all extend TrainingArguments)."""
    return dict(
        **trainer_kwargs(cfg, run, has_eval),
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_length=cutoff_len,
    )


def wire_callbacks(trainer, config: RunConfig, run: RunFolder):
    from transformers.trainer_callback import ProgressCallback

    # the monitor first: it puts NaN losses back into the logs the metrics callback writes
    trainer.add_callback(TrainingMonitor(config.train.monitor, run))
    trainer.add_callback(MetricsCallback(run, config.train.monitor.plot_every))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgressCallback)
    return trainer


def trainer_monitor(trainer) -> TrainingMonitor:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainingMonitor))


def save(model, tokenizer, run: RunFolder, config: RunConfig):
    method = get_method(config.method.type)
    artifact = run.root / method.artifact
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen reference copy: not part of the result
    if is_main_process():
        task = "seq_cls" if config.train.stage == "rm" else "causal_lm"
        method.save(model, tokenizer, artifact, config.method, task)
    return artifact


def finish(run: RunFolder, config: RunConfig, model_ref: str, artifact, summary: dict, monitor):
    run.write_json("summary.json", summary)
    status = "stopped" if monitor.stopped_by else "done"
    stage, method = config.train.stage, config.method.type
    run.add_to_index(stage=stage, method=method, model=model_ref, status=status)
    if is_main_process():
        console.print(
            f"saved {artifact}  (loss {summary['train_loss']:.4f}, {summary['seconds']} s)"
        )
    return TrainResult(run, artifact, summary)


def logged_rewards(history: list[dict], keys: tuple[str, ...] = REWARD_KEYS) -> dict:
    """The first and last logged training values of the reward metrics."""
    logs = [h for h in history if any(k in h for k in keys) and "loss" in h]
    pick = lambda h: {k: round(h[k], 4) for k in keys if k in h}  # noqa: E731
    return {"first": pick(logs[0]), "last": pick(logs[-1])} if logs else {}


def held_out_rewards(trainer, keys: tuple[str, ...] = REWARD_KEYS) -> dict:
    metrics = trainer.evaluate()
    wanted = ("eval_loss", *(f"eval_{k}" for k in keys))
    return {k.removeprefix("eval_"): round(v, 4) for k, v in metrics.items() if k in wanted}


def report_data(data: PreferenceData, run: RunFolder) -> None:
    stats = data.stats
    console.print(
        f"data: {stats['read']} records read, {stats['examples']} examples, "
        f"{stats['truncated']} truncated to cutoff_len, {stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )


# --- trainers: TRL's, fed the token ids of data/preference.py ---------------------------


def make_trainer(config: RunConfig, run, model, ref_model, tokenizer, train_data, eval_data):
    from datasets import Dataset

    stage, pref, cfg = config.train.stage, config.train.preference, config.train
    args = trl_arguments(cfg, run, eval_data is not None, config.data.cutoff_len)
    datasets = {
        "train_dataset": Dataset.from_list(train_data.examples),
        "eval_dataset": Dataset.from_list(eval_data.examples) if eval_data else None,
    }
    common = {"processing_class": tokenizer, **datasets}
    if stage == "dpo":
        from trl import DPOConfig

        dpo = DPOConfig(
            **args,
            beta=pref.beta,
            loss_type=[pref.loss_type],
            label_smoothing=pref.label_smoothing,
        )
        trainer = _dpo_class()(model=model, ref_model=ref_model, args=dpo, **common)
    elif stage == "kto":
        from trl import KTOConfig

        kto = KTOConfig(
            **{**args, "train_sampling_strategy": "sequential"},  # TRL pairs KL terms in order
            beta=pref.beta,
            desirable_weight=pref.desirable_weight,
            undesirable_weight=pref.undesirable_weight,
        )
        if cfg.batch_size < 2:
            raise ConfigError("train.batch_size: kto needs at least 2 (its KL term mixes a batch)")
        trainer = _kto_class()(model=model, ref_model=ref_model, args=kto, **common)
    elif stage == "orpo":
        from trl.experimental.orpo import ORPOConfig

        orpo = ORPOConfig(**args, beta=pref.beta, remove_unused_columns=False)
        trainer = _pairwise_class("orpo")(model=model, args=orpo, **common)
    else:  # simpo: CPO's trainer with the SimPO loss and no behaviour-cloning term
        from trl.experimental.cpo import CPOConfig

        simpo = CPOConfig(
            **args,
            loss_type="simpo",
            cpo_alpha=0.0,
            beta=pref.beta,
            simpo_gamma=pref.simpo_gamma,
            remove_unused_columns=False,
        )
        trainer = _pairwise_class("simpo")(model=model, args=simpo, **common)
    return wire_callbacks(trainer, config, run)


def _dpo_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(AtomicCheckpoints, DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids, cut to cutoff_len

    return PretokenizedDPOTrainer


def _kto_class():
    from trl import KTOTrainer

    class PretokenizedKTOTrainer(AtomicCheckpoints, KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            # as TRL does: the KL completions are the batch's completions rotated by one
            def rotate(batch):
                completions = batch["completion_ids"]
                batch["KL_completion_ids"] = [completions[-1], *completions[:-1]]
                return batch

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    return PretokenizedKTOTrainer


def _pairwise_class(stage: str):
    """ORPO's and CPO's trainers tokenize text row by row; this row builder takes our ids."""
    if stage == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Base
    else:
        from trl.experimental.cpo import CPOTrainer as Base

    class PretokenizedTrainer(AtomicCheckpoints, Base):
        def tokenize_row(self, feature, model=None) -> dict:
            return pairwise_row(
                feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"]
            )

    return PretokenizedTrainer


def pairwise_row(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        row[f"{name}_input_ids"] = prompt + answer
        row[f"{name}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{name}_labels"] = [-100] * len(prompt) + answer
    return row
