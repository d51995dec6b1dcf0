"""Generation speed: the batched TransformersEngine against one-by-one `model.generate` (issue 4).

The embedded SmolLM2-135M-Instruct (fp32, CPU, 2 torch threads), the instructions (with their
inputs) of the first N records of ../shared/data/llamafactory/alpaca_en_demo.json as one-turn
chats rendered by data/render.prompt_ids, greedy, max_new_tokens 64. Both sides get the same
prompt ids, end tokens and pad token; one prompt through each side first warms them up.

Measured: wall time of `engine.generate(all prompts)` (length-sorted, left-padded batches with
the KV cache) and of a loop of `model.generate` on one unpadded prompt at a time; speed-up =
one-by-one / batched; generated tokens/s (end token included, as the engine counts them); the
share of prompts whose two outputs are the same text. The machine may be shared: the load
average before and after is printed so a reader can judge contention.

    .venv/bin/python benchmarks/eval_generation.py [--n 200] [--max-new-tokens 64]
        [--batch-size 16] [--threads 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0].parent / "shared/data/llamafactory/alpaca_en_demo.json"
MODEL = "smollm2-135m-instruct"
THREADS = 2


def load_prompts(n: int) -> list[list[dict]]:
    records = json.loads(DATA.read_text(encoding="utf-8"))[:n]
    texts = [f"{r['instruction']}\n\n{r['input']}".strip() for r in records]
    return [[{"role": "user", "content": text}] for text in texts]


def one_by_one(model, tokenizer, engine, ids: list[int], max_new_tokens: int) -> tuple[str, int]:
    """Text and generated-token count of plain `model.generate` on one unpadded prompt."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=engine.eos_ids,
            pad_token_id=engine.pad_id,
        )
    tokens = out[0, len(ids) :].tolist()
    end = next((k for k, t in enumerate(tokens) if t in engine.eos_ids), None)
    text = tokenizer.decode(tokens if end is None else tokens[:end], skip_special_tokens=True)
    return text, len(tokens) if end is None else end + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="torch threads (1 resists a busy machine)"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found (the LLaMA-Factory demo data is not on this machine)")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.config.schema import ModelConfig
    from tunesmith.data.render import prompt_ids
    from tunesmith.models.engine import GenerationParams, TransformersEngine
    from tunesmith.models.load import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(name_or_path=MODEL, dtype="float32"))
    model.eval()
    engine = TransformersEngine(model, tokenizer, batch_size=args.batch_size)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    conversations = load_prompts(args.n)
    prompts = [prompt_ids(tokenizer, conv) for conv in conversations]
    load_before = os.getloadavg()

    engine.generate_ids(prompts[:1], params)  # warm-up, both sides
    one_by_one(model, tokenizer, engine, prompts[0], args.max_new_tokens)

    started = time.perf_counter()
    batched = engine.generate_ids(prompts, params)
    batched_s = time.perf_counter() - started
    print(f"batched: {batched_s:.1f} s; now one by one ...", file=sys.stderr, flush=True)

    started = time.perf_counter()
    single = [one_by_one(model, tokenizer, engine, ids, args.max_new_tokens) for ids in prompts]
    single_s = time.perf_counter() - started

    same = sum(b.text == text for b, (text, _) in zip(batched, single, strict=True))
    result = {
        "benchmark": "eval_generation",
        "model": MODEL,
        "prompts": len(prompts),
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "batched_seconds": round(batched_s, 2),
        "one_by_one_seconds": round(single_s, 2),
        "speedup": round(single_s / batched_s, 2),
        "batched_tokens": sum(c.completion_tokens for c in batched),
        "one_by_one_tokens": sum(count for _, count in single),
        "batched_tokens_per_s": round(sum(c.completion_tokens for c in batched) / batched_s, 1),
        "one_by_one_tokens_per_s": round(sum(count for _, count in single) / single_s, 1),
        "identical_outputs": f"{same}/{len(prompts)}",
        "identical_share": round(same / len(prompts), 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
