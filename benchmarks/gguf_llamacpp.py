"""Every GGUF type tunesmith exports, loaded by llama.cpp itself: file size, perplexity and
greedy output against the merged model in transformers, and llama.cpp's generation tokens/s.

llama.cpp is built once from the llama-cpp-python source package (PyPI) into the cache
(`--build`; ~10-20 min on 2 cores, so this stays out of the test suite), or given with
`--llama-cpp DIR` (a folder holding llama-quantize, llama-perplexity, llama-completion).

    .venv/bin/python benchmarks/gguf_llamacpp.py --build
    .venv/bin/python benchmarks/gguf_llamacpp.py --types f16,q8_0,q4_0,q4_k_m --arch qwen2

The model is the embedded SmolLM2-135M-Instruct (Llama layout), or with `--arch qwen2|qwen3` a
small random model of that architecture with SmolLM2's tokenizer (no Qwen weights load
offline): random weights still show whether llama.cpp computes what transformers computes.
Perplexity: llama-perplexity's own scheme (chunks of --ctx tokens, the second half of each
scored) on wiki_demo.txt from ../shared (LLaMA-Factory's demo text), replicated in
transformers for the merged model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "llamafactory" / "wiki_demo.txt"
PROMPTS = ["Who are you?", "What is the capital of France?", "Write one sentence about the sea."]
SOURCE = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp
TOOLS = ("llama-quantize", "llama-perplexity", "llama-completion")


def build_llama_cpp(cache: Path) -> Path:
    """llama.cpp's tools built from the llama-cpp-python source package, once."""
    bin_dir = cache / "build" / "bin"
    if all((bin_dir / tool).is_file() for tool in TOOLS):
        return bin_dir
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", SOURCE, "--no-binary", ":all:", "--no-deps"]
    subprocess.run([*pip, "-d", str(cache)], check=True)
    archive = next(cache.glob("llama_cpp_python-*.tar.gz"))
    shutil.unpack_archive(archive, cache)
    source = next(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"]
    subprocess.run(["cmake", "-S", str(source), "-B", str(cache / "build"), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    build = ["cmake", "--build", str(cache / "build"), "-j", jobs, "--target", *TOOLS]
    subprocess.run(build, check=True)
    return bin_dir


def model_folder(arch: str, work: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    smol = Path(resolve_model("smollm2-135m-instruct").path)
    folder = work / arch
    if arch == "llama":
        shutil.copytree(smol, folder)
        return folder
    tokenizer = AutoTokenizer.from_pretrained(smol)
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **({"head_dim": 128} if arch == "qwen3" else {}),
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random weights with some spread, so greedy output is not flat
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hf_perplexity(model, ids: list[int], ctx: int, chunks: int) -> float:
    """llama-perplexity's scheme: chunk i is ids[i*ctx:(i+1)*ctx], scored on its second half."""
    nll, count = 0.0, 0
    for i in range(chunks):
        chunk = torch.tensor([ids[i * ctx : (i + 1) * ctx]])
        with torch.inference_mode():
            logprobs = model(input_ids=chunk).logits[0].float().log_softmax(-1)
        first = ctx // 2
        targets = chunk[0, first:]
        nll -= float(logprobs[first - 1 : ctx - 1].gather(1, targets[:, None]).sum())
        count += len(targets)
    return math.exp(nll / count)


def llama_perplexity(tool: Path, gguf: Path, text: Path, ctx: int, chunks: int) -> float:
    args = ["-f", str(text), "-c", str(ctx), "-b", str(ctx), "--chunks", str(chunks), "-t", "2"]
    done = subprocess.run(
        [str(tool), "-m", str(gguf), *args],
        capture_output=True,
        text=True,
        errors="replace",  # a random model's bytes need not be UTF-8
        check=True,
    )
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
    return float(found.group(1))


def llama_greedy(tool: Path, gguf: Path, prompt: str, n: int) -> tuple[str, float]:
    greedy = ["-n", str(n), "--temp", "0", "--top-k", "1", "-s", "0", "-t", "2"]
    quiet = ["-no-cnv", "--no-display-prompt", "--no-warmup"]
    done = subprocess.run(
        [str(tool), "-m", str(gguf), "-p", prompt, *greedy, *quiet],
        capture_output=True,
        text=True,
        errors="replace",  # a random model's bytes need not be UTF-8
        check=True,
        stdin=subprocess.DEVNULL,
    )
    rate = re.search(r"eval time .*?([0-9.]+) tokens per second", done.stderr)
    return done.stdout, float(rate.group(1)) if rate else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama.cpp's tools")
    parser.add_argument("--build", action="store_true", help="build llama.cpp into the cache")
    parser.add_argument("--arch", default="llama", choices=["llama", "qwen2", "qwen3"])
    parser.add_argument("--types", default="f32,f16,bf16,q8_0,q5_0,q4_0,q6_k,q4_k_m")
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.data.render import prompt_ids
    from tunesmith.export.gguf import gguf_name, write_gguf
    from tunesmith.models.resolve import cache_dir

    torch.set_num_threads(2)
    cache = cache_dir() / "llamacpp"
    bin_dir = args.llama_cpp or (build_llama_cpp(cache) if args.build else cache / "build/bin")
    if not all((bin_dir / tool).is_file() for tool in TOOLS):
        sys.exit(f"no llama.cpp tools in {bin_dir}: run with --build or give --llama-cpp DIR")
    types = args.types.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.arch, Path(tmp))
        facts = write_gguf(folder, types, PROMPTS[:2], llama_cpp=str(bin_dir))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        text = TEXT if TEXT.is_file() else Path(tmp) / "text.txt"
        if not TEXT.is_file():
            text.write_text(" ".join(PROMPTS * 2000), encoding="utf-8")
        ids = tokenizer(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        reference_ppl = hf_perplexity(model, ids, args.ctx, args.chunks)
        rendered = [tokenizer.decode(prompt_ids(tokenizer, [{"role": "user", "content": p}]))
                    for p in PROMPTS]  # fmt: skip
        reference = []
        for prompt in rendered:
            batch = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False)
            reference.append(tokenizer.decode(out[0, batch.input_ids.shape[1] :]))
        rows = []
        for fact in facts:
            path = folder / gguf_name(fact["type"])
            ppl = llama_perplexity(bin_dir / "llama-perplexity", path, text, args.ctx, args.chunks)
            answers = [llama_greedy(bin_dir / "llama-completion", path, p, args.new_tokens)
                       for p in rendered]  # fmt: skip
            same = [_common_prefix(a, r) for (a, _), r in zip(answers, reference, strict=True)]
            rows.append(
                {
                    **fact,
                    "mb": round(fact["bytes"] / 2**20, 1),
                    "llama_cpp_ppl": ppl,
                    "hf_ppl": reference_ppl,
                    "same_greedy_chars": same,
                    "reference_chars": [len(r) for r in reference],
                    "tokens_per_s": round(sum(rate for _, rate in answers) / len(answers), 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows, args))


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def table(rows: list[dict], args) -> str:
    lines = [
        f"arch {args.arch}; perplexity on {args.chunks} chunks of {args.ctx} tokens "
        f"(transformers, merged float32: {rows[0]['hf_ppl']:.3f})",
        "",
        "| type | MB | llama.cpp PPL | logit RMS err / spread (transformers) | same greedy "
        "chars (of reference) | llama.cpp tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = " / ".join(f"{s}/{n}" for s, n in zip(r["same_greedy_chars"], r["reference_chars"],
                                                       strict=True))  # fmt: skip
        lines.append(
            f"| {r['type']} | {r['mb']} | {r['llama_cpp_ppl']:.3f} | {r['relative_rms']:.3f} "
            f"| {same} | {r['tokens_per_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
