"""What the online RL stages (grpo, ppo) share: their prompt data.

Prompt records are read by data/prompts.py (every record kept or written to rejects.jsonl);
here the ones that cannot train are rejected with their reason: a reward that compares with the
record's `answer` and no answer, or a prompt that leaves data.cutoff_len no room for
max_completion_length tokens.
"""

from __future__ import annotations

from tunesmith.data.prompts import read_prompts
from tunesmith.data.render import prompt_ids
from tunesmith.runs.folder import RunFolder
from tunesmith.train.recipe import Data, Job
from tunesmith.train.reward_functions import NEEDS_ANSWER
from tunesmith.utils.console import console


def read_prompt_files(job: Job):
    run = job.run

    def reject(record, reason):
        run.reject(record.source, record.line, reason, record.data)

    on_error = job.config.data.on_error
    train_prompts = read_prompts(job.config.data.train, on_error, reject)
    held_out = (
        read_prompts(job.config.data.eval, on_error, reject) if job.config.data.eval else None
    )
    return train_prompts, held_out


def prompt_examples(job: Job, stage_cfg) -> Data:
    """The prompts that fit: a reward comparing with `answer` needs one, and the rendered
    prompt must leave data.cutoff_len room for max_completion_length tokens."""
    (records, stats), held_out = job.sources
    tokenizer, cutoff = job.loaded.tokenizer, job.config.data.cutoff_len
    budget = cutoff - stage_cfg.max_completion_length
    needs_answer = [r.name for r in stage_cfg.rewards if r.name in NEEDS_ANSWER]

    def keep(rows, counts):
        kept = []
        for row in rows:
            source, line = row.pop("_where")
            reason = None
            if needs_answer and row.get("answer") is None:
                reason = f"no 'answer' for the reward(s) {', '.join(needs_answer)}"
            elif len(prompt_ids(tokenizer, row["prompt"])) > budget:
                reason = (
                    f"prompt longer than data.cutoff_len ({cutoff}) minus "
                    f"max_completion_length: {budget} tokens"
                )
            if reason:
                job.run.reject(source, line, reason, row)
                counts["rejected"] += 1
            else:
                kept.append(row)
        counts["examples"] = len(kept)
        counts["truncated"] = 0
        return kept

    train_rows = keep(records, stats)
    eval_rows = keep(*held_out) if held_out else None
    return Data(
        train=train_rows,
        eval=eval_rows,
        stats=stats,
        summary={"data": stats, "eval_data": held_out[1] if held_out else None},
    )


def report_prompts(data: Data, run: RunFolder) -> None:
    stats = data.stats
    console.print(
        f"data: {stats['read']} prompt records read, {stats['examples']} prompts, "
        f"{stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )
