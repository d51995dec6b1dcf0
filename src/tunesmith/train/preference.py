"""Preference alignment on TRL: dpo, orpo, simpo (CPO with the SimPO loss) and kto.

The recipe: data tokenized by data/preference.py with the model's own template, the model (and
its reference), TRL's trainer fed those token ids, held-out rewards before and after.

The reference model of dpo and kto: with LoRA, TRL keeps a frozen copy of the freshly
initialised adapter under the name "ref" (equal to the base model, as LoRA starts at zero)
instead of a second model; with full or freeze training, a frozen copy of the loaded model.
orpo and simpo need no reference.

With train.optimize (the default) dpo, kto and orpo run on packed rows
(models/preference_speed.py): the batch's sequences end to end in one row with per-sequence
attention, log-probabilities through the fused output layer, dpo's and kto's reference from the
same row with a fresh adapter disabled (TRL's "ref" copy is dropped when it equals the base
model). The losses and their metrics are TRL's arithmetic (dpo: the sigmoid loss, kto: the kto
loss; other losses and settings stay on TRL's own path); simpo keeps TRL's padded batches,
with models/speed.py's levers.
"""

from __future__ import annotations

import copy

from tunesmith.config.schema import RunConfig
from tunesmith.data.registry import preference_sources
from tunesmith.runs.folder import RunFolder
from tunesmith.train.arguments import trl_arguments
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.preference_speed import (
    PackedDPO,
    PackedKTO,
    PackedORPO,
    packed_dpo_applies,
    packed_kto_applies,
    packed_orpo_applies,
)
from tunesmith.train.recipe import (
    Data,
    Job,
    Loaded,
    Recipe,
    TrainResult,
    load_causal_lm,
    train,
)
from tunesmith.train.rewards import Rewards, preference_examples
from tunesmith.train.trainer import NO_LOSS_HOOKS, SequenceTokens
from tunesmith.utils.errors import ConfigError

PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "kto")
NEEDS_REFERENCE = ("dpo", "kto")


def run_preference(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    stage = config.train.stage
    if stage not in PREFERENCE_STAGES:
        raise ConfigError(f"train.stage: '{stage}' is not a preference stage ({PREFERENCE_STAGES})")
    return train(RECIPES[stage], config, run, resume)


def _load(job: Job, quantization) -> Loaded:
    loaded = load_causal_lm(job, quantization)
    if job.config.train.stage in NEEDS_REFERENCE and job.config.method.type != "lora":
        # full/freeze change the weights the reference must keep
        loaded.reference = frozen_copy(loaded.model)
    return loaded


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _data(job: Job) -> Data:
    return preference_examples(job, paired=job.config.train.stage != "kto")


def without_reference(trainer):
    """The trained model without TRL's frozen "ref" adapter: not part of the result."""
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return model


# --- trainers: TRL's, fed the token ids of data/preference.py ---------------------------


def _trl(job: Job) -> tuple[dict, dict]:
    """(the TRL config's shared arguments, the trainer's data and tokenizer arguments)."""
    from datasets import Dataset

    config, data = job.config, job.data
    args = trl_arguments(config.train, job.run, data.eval is not None, config.data.cutoff_len)
    common = {
        "processing_class": job.loaded.tokenizer,
        "train_dataset": Dataset.from_list(data.train),
        "eval_dataset": Dataset.from_list(data.eval) if data.eval is not None else None,
    }
    return args, common


def _dpo_trainer(job: Job):
    from trl import DPOConfig

    (args, common), pref = _trl(job), job.config.train.preference
    dpo = DPOConfig(
        **args, beta=pref.beta, loss_type=[pref.loss_type], label_smoothing=pref.label_smoothing
    )
    packed = packed_dpo_applies(job.config, job.model, dpo)
    common |= {"model": job.model, "ref_model": job.loaded.reference, "args": dpo}
    return _packed(_dpo_class(), PackedDPO, packed, common, job.config.data.cutoff_len)


def _kto_trainer(job: Job):
    from trl import KTOConfig

    (args, common), pref = _trl(job), job.config.train.preference
    kto = KTOConfig(
        **{**args, "train_sampling_strategy": "sequential"},  # TRL pairs KL terms in order
        beta=pref.beta,
        desirable_weight=pref.desirable_weight,
        undesirable_weight=pref.undesirable_weight,
    )
    packed = packed_kto_applies(job.config, job.model, kto)
    common |= {"model": job.model, "ref_model": job.loaded.reference, "args": kto}
    return _packed(_kto_class(), PackedKTO, packed, common, job.config.data.cutoff_len)


def _packed(trainer_class, packing, applies: bool, kwargs: dict, *collator_args):
    """The trainer, on packed rows (`packing`'s collator and loss) where `applies`."""
    if applies:
        kwargs["data_collator"] = packing.collator(*collator_args)
    trainer = trainer_class(**kwargs)
    if applies:
        packing.attach(trainer)
    return trainer


def _check_kto(config: RunConfig) -> None:
    if config.train.batch_size < 2:
        raise ConfigError("train.batch_size: kto needs at least 2 (its KL term mixes a batch)")


def _orpo_trainer(job: Job):
    from trl.experimental.orpo import ORPOConfig

    (args, common), pref = _trl(job), job.config.train.preference
    orpo = ORPOConfig(**args, beta=pref.beta, remove_unused_columns=False)
    packed = packed_orpo_applies(job.config, job.model, orpo)
    common |= {"model": job.model, "args": orpo}
    return _packed(_pairwise_class("orpo"), PackedORPO, packed, common)


def _simpo_trainer(job: Job):
    """CPO's trainer with the SimPO loss and no behaviour-cloning term."""
    from trl.experimental.cpo import CPOConfig

    (args, common), pref = _trl(job), job.config.train.preference
    simpo = CPOConfig(
        **args,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=pref.beta,
        simpo_gamma=pref.simpo_gamma,
        remove_unused_columns=False,
    )
    return _pairwise_class("simpo")(model=job.model, args=simpo, **common)


def _dpo_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(AtomicCheckpoints, PackedDPO, SequenceTokens, DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids, cut to cutoff_len

    return PretokenizedDPOTrainer


def _kto_class():
    from trl import KTOTrainer

    class PretokenizedKTOTrainer(AtomicCheckpoints, PackedKTO, SequenceTokens, KTOTrainer):
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

        mixins = (AtomicCheckpoints, PackedORPO, SequenceTokens)
    else:
        from trl.experimental.cpo import CPOTrainer as Base

        mixins = (AtomicCheckpoints, SequenceTokens)  # simpo: TRL's padded batches

    class PretokenizedTrainer(*mixins, Base):
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


def _recipe(stage: str, trainer, check=lambda config: None) -> Recipe:
    return Recipe(
        name=stage,
        check=check,
        read=lambda job: preference_sources(job.config.data, kto=stage == "kto"),
        load=_load,
        data=_data,
        trainer=trainer,
        probes=lambda job: [Rewards(job)],
        artifact_model=without_reference,
        refuses=NO_LOSS_HOOKS,
        example="pairs.jsonl",
        speed=True,  # train.optimize: models/speed.py's levers, and dpo's packed path
    )


RECIPES = {
    "dpo": _recipe("dpo", _dpo_trainer),
    "orpo": _recipe("orpo", _orpo_trainer),
    "simpo": _recipe("simpo", _simpo_trainer),
    "kto": _recipe("kto", _kto_trainer, check=_check_kto),
}
# module-level names too: the planner's test finds every stage's recipe among module values
DPO, ORPO, SIMPO, KTO = (RECIPES[stage] for stage in ("dpo", "orpo", "simpo", "kto"))
