"""Every GGUF type tunesmith exports, loaded by llama.cpp itself: file size, perplexity and
greedy output against the merged model in transformers, and llama.cpp's generation tokens/s.

llama.cpp is built once from the llama-cpp-python source package (PyPI) into the cache
(`--build`; ~10-20 min on 2 cores, so this stays out of the test suite), or given with
`--llama-cpp DIR` (a folder holding the tools in TOOLS below).

    .venv/bin/python benchmarks/gguf_llamacpp.py --build
    .venv/bin/python benchmarks/gguf_llamacpp.py --types f16,q8_0,q4_0,q4_k_m --arch qwen2
    .venv/bin/python benchmarks/gguf_llamacpp.py --arch gemma3   # or gemma, gemma2

The model is the embedded SmolLM2-135M-Instruct (Llama layout), or with `--arch qwen2|qwen3` a
small random model of that architecture with SmolLM2's tokenizer (no Qwen weights load
offline): random weights still show whether llama.cpp computes what transformers computes.
`--arch gemma|gemma2|gemma3`: a small random Gemma (random (1 + w) norms; Gemma 2/3 with a
64-token sliding window on some layers, so the 256-token perplexity chunks cross it) with a
SentencePiece-style BPE tokenizer trained here on the same text (Gemma's own is not offline);
llama.cpp adds the BOS Gemma wants, and the transformers replica of its perplexity does too.
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
# llama-tokenize and llama-simple: tests/test_export_gguf.py's llama.cpp checks use them
TOOLS = ("llama-quantize", "llama-perplexity", "llama-completion", "llama-tokenize", "llama-simple")


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
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON", "-DBUILD_SHARED_LIBS=OFF"]
    subprocess.run(["cmake", "-S", str(source), "-B", str(cache / "build"), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    build = ["cmake", "--build", str(cache / "build"), "-j", jobs, "--target", *TOOLS]
    subprocess.run(build, check=True)
    return bin_dir


def spm_tokenizer(lines: list[str], vocab_size: int):
    """Gemma's tokenizer kind, trained here: BPE with byte fallback, '▁' for spaces, no prefix
    space; ids pad/eos/bos/unk/mask, turn markers, 256 byte tokens, then pieces; merges derived
    from the vocabulary as transformers derives them from a SentencePiece model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    fixed = special + [f"<0x{i:02X}>" for i in range(256)]
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=fixed, show_progress=False)
    core.train_from_iterator(lines, trainer)
    vocab = core.get_vocab()
    order = {token: -index for token, index in vocab.items()}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, order, fixed))
    tokenizer.add_special_tokens({"additional_special_tokens": special[5:]})
    tokenizer.add_bos_token = True  # as Gemma's: text starts with <bos>
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if "
        "message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + "
        "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<start_of_turn>model\n' }}{% endif %}"
    )
    return tokenizer


def gemma_folder(arch: str, work: Path, text: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = spm_tokenizer(text.read_text(encoding="utf-8").splitlines(), 2000)
    layers = ["sliding_attention"] * 3 + ["full_attention"]
    window = dict(
        query_pre_attn_scalar=64,
        sliding_window=64,
        layer_types=layers if arch == "gemma3" else layers[2:] * 2,
    )
    config = AutoConfig.for_model(
        "gemma3_text" if arch == "gemma3" else arch,
        **({} if arch == "gemma" else window),  # Gemma 1: global attention only
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # spread in the weights, and norms away from (1 + 0)
        for name, p in model.named_parameters():
            p.normal_(0, 0.2 if name.endswith("norm.weight") else 0.08)
        # a small embedding (Gemma scales it by sqrt(hidden)), or greedy decoding repeats the
        # last token; byte and special tokens score 0, so greedy text is what llama.cpp prints
        embedding = model.get_input_embeddings().weight
        embedding.mul_(0.25)
        embedding[[i for t, i in tokenizer.get_vocab().items() if t.startswith("<")]] = 0.0
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    folder = work / arch
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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


def hf_perplexity(model, ids: list[int], ctx: int, chunks: int, bos: int | None = None) -> float:
    """llama-perplexity's scheme: chunk i is ids[i*ctx:(i+1)*ctx]; the logits at positions
    ctx/2 .. ctx-2 score the tokens after them (ctx/2 - 1 tokens a chunk, perplexity.cpp's
    process_logits); for a model that adds BOS, the text starts with it and each chunk's first
    token is BOS."""
    nll, count = 0.0, 0
    if bos is not None:
        ids = [bos, *ids]
    for i in range(chunks):
        chunk = torch.tensor([ids[i * ctx : (i + 1) * ctx]])
        if bos is not None:
            chunk[0, 0] = bos
        with torch.inference_mode():
            logprobs = model(input_ids=chunk).logits[0].float().log_softmax(-1)
        first = ctx // 2
        targets = chunk[0, first + 1 :]
        nll -= float(logprobs[first : ctx - 1].gather(1, targets[:, None]).sum())
        count += len(targets)
    return math.exp(nll / count)


def llama_perplexity(tool: Path, gguf: Path, text: Path, ctx: int, chunks: int) -> float:
    args = ["-f", str(text), "-c", str(ctx), "-b", str(ctx), "--chunks", str(chunks), "-t", "2"]
    for _ in range(8):  # llama.cpp's logger may lose its last lines at exit (#22142): again
        done = subprocess.run(
            [str(tool), "-m", str(gguf), *args],
            capture_output=True,
            text=True,
            errors="replace",  # a random model's bytes need not be UTF-8
            check=True,
        )
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
        if found:
            return float(found.group(1))
    raise RuntimeError(f"llama-perplexity printed no final estimate for {gguf.name}")


def llama_greedy(tool: Path, gguf: Path, prompt: str, n: int) -> tuple[str, float]:
    greedy = ["-n", str(n), "--temp", "0", "--top-k", "1", "-s", "0", "-t", "2"]
    quiet = ["-no-cnv", "--no-display-prompt", "--no-warmup"]
    for _ in range(8):  # the text and the timings come last, and can be lost at exit: again
        done = subprocess.run(
            [str(tool), "-m", str(gguf), "-p", prompt, *greedy, *quiet],
            capture_output=True,
            text=True,
            errors="replace",  # a random model's bytes need not be UTF-8
            check=True,
            stdin=subprocess.DEVNULL,
        )
        rate = re.search(r"eval time .*?([0-9.]+) tokens per second", done.stderr)
        if rate:
            return done.stdout, float(rate.group(1))
    return done.stdout, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama.cpp's tools")
    parser.add_argument("--build", action="store_true", help="build llama.cpp into the cache")
    parser.add_argument(
        "--arch",
        default="llama",
        choices=["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"],
    )
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
    gemma = args.arch.startswith("gemma")
    with tempfile.TemporaryDirectory() as tmp:
        text = TEXT if TEXT.is_file() else Path(tmp) / "text.txt"
        if not TEXT.is_file():
            text.write_text(" ".join(PROMPTS * 2000), encoding="utf-8")
        work = Path(tmp)
        folder = gemma_folder(args.arch, work, text) if gemma else model_folder(args.arch, work)
        facts = write_gguf(folder, types, PROMPTS[:2], llama_cpp=str(bin_dir))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = tokenizer(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id if gemma else None  # llama.cpp adds Gemma's BOS
        reference_ppl = hf_perplexity(model, ids, args.ctx, args.chunks, bos)
        rendered = [tokenizer.decode(prompt_ids(tokenizer, [{"role": "user", "content": p}]))
                    for p in PROMPTS]  # fmt: skip
        reference = []
        for prompt in rendered:
            batch = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False)
            new = out[0, batch.input_ids.shape[1] :]
            reference.append(spm_text(tokenizer, new) if gemma else tokenizer.decode(new))
        if gemma:  # the template writes <bos>; llama.cpp adds it itself
            rendered = [p.removeprefix(tokenizer.bos_token) for p in rendered]
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


def spm_text(tokenizer, ids) -> str:
    """What llama.cpp prints for SentencePiece tokens (byte tokens as raw bytes, '▁' as a
    space, control tokens as nothing), decoded as the benchmark reads llama.cpp's output."""
    out = b""
    for token in tokenizer.convert_ids_to_tokens(ids.tolist()):
        if token in tokenizer.all_special_tokens:
            continue
        if re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            out += bytes([int(token[3:5], 16)])
        else:
            out += token.replace("\u2581", " ").encode("utf-8")
    return out.decode("utf-8", errors="replace")


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
