"""A real-text classification set for the cls benchmarks: which corpus a passage comes from.

Five classes from LLaMA-Factory's demo datasets in ../shared/data/llamafactory (third-party
text nobody here wrote): `web` (c4_demo documents), `encyclopedia` (wiki_demo articles cut
into passages of 60 to 900 words at paragraph or sentence ends), `instruction` (alpaca_en_demo
answers), `dialogue` (dpo_en_demo chosen answers) and `tool_call` (glaive_toolcall_en_demo
conversations flattened to text). The lengths vary as real corpora do: short instruction
answers, long web pages and passages, so padding, truncation and length grouping all matter.

    .venv/bin/python benchmarks/cls_data.py OUT_DIR [--per-class 300] [--test 0.2]

writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl (`text`, `label`), split per class.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared/data/llamafactory"


def available() -> bool:
    return (SHARED / "c4_demo.jsonl").is_file() and (SHARED / "wiki_demo.txt").is_file()


def _json(name: str) -> list:
    return json.loads((SHARED / name).read_text(encoding="utf-8"))


def _passages(article: str, rng: random.Random) -> list[str]:
    """An article cut into passages of 60 to 900 words, at sentence ends."""
    sentences = article.replace("\n", " ").split(". ")
    passages, current, target = [], [], rng.randint(60, 900)
    for sentence in sentences:
        current.append(sentence)
        if sum(len(s.split()) for s in current) >= target:
            passages.append(". ".join(current).strip() + ".")
            current, target = [], rng.randint(60, 900)
    return passages


def corpora(rng: random.Random) -> dict[str, list[str]]:
    web = [json.loads(line)["text"] for line in (SHARED / "c4_demo.jsonl").open(encoding="utf-8")]
    wiki = [line for line in (SHARED / "wiki_demo.txt").open(encoding="utf-8") if line.strip()]
    tools = [
        "\n".join(f"{turn['from']}: {turn['value']}" for turn in record["conversations"])
        for record in _json("glaive_toolcall_en_demo.json")
    ]
    return {
        "web": web,
        "encyclopedia": [p for article in wiki for p in _passages(article, rng)],
        "instruction": [r["output"] for r in _json("alpaca_en_demo.json") if r["output"].strip()],
        "dialogue": [r["chosen"]["value"] for r in _json("dpo_en_demo.json")],
        "tool_call": tools,
    }


def build(out_dir: Path, per_class: int = 300, test: float = 0.2, seed: int = 0) -> dict:
    """Write train.jsonl and test.jsonl under out_dir; returns their paths and counts."""
    rng = random.Random(seed)
    train, held = [], []
    for label, texts in corpora(rng).items():
        texts = [t for t in texts if t.strip()]
        rng.shuffle(texts)
        texts = texts[:per_class]
        cut = round(len(texts) * test)
        held += [{"text": t, "label": label} for t in texts[:cut]]
        train += [{"text": t, "label": label} for t in texts[cut:]]
    rng.shuffle(train)
    rng.shuffle(held)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}
    for name, records in (("train", train), ("test", held)):
        with paths[name].open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return {
        "train": str(paths["train"]),
        "test": str(paths["test"]),
        "n_train": len(train),
        "n_test": len(held),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--test", type=float, default=0.2)
    args = parser.parse_args()
    if not available():
        raise SystemExit(f"{SHARED}: LLaMA-Factory's demo data is not there")
    print(json.dumps(build(args.out_dir, args.per_class, args.test)))


if __name__ == "__main__":
    main()
