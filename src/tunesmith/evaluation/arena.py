"""The arena: people compare two models' answers blind and vote; the votes are the evidence.

Votes live in the run folder (`RUN/arena/votes.jsonl`, one JSON line each), so they survive a
restart and travel with the run. A vote names the two models by reference ("base", "run:NAME")
and the winner by the same reference, or "tie"; which side each answer was shown on is the
page's business. Statistics are the run's win rate against one opponent over the decisive
votes (ties reported beside it) with a Wilson score interval, and how many more decisive votes
bring the interval's half-width down to a chosen margin. `export_pairs` writes the decisive
votes as alpaca preference pairs (instruction, input, chosen, rejected), which stage dpo reads
(data/preference.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tunesmith.data.formats import load_conversations
from tunesmith.runs.folder import atomic_write, read_jsonl
from tunesmith.utils.errors import TunesmithError

VOTES = "arena/votes.jsonl"
TIE = "tie"
Z95 = 1.959963984540054


def votes_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / VOTES


def record_vote(
    run_dir: str | Path,
    prompt: str,
    answers: dict[str, str],
    winner: str,
    reason: str = "",
) -> dict:
    """Append one vote: `answers` maps the two model references to their answers; `winner` is
    one of them or "tie"."""
    if len(answers) != 2:
        raise TunesmithError(f"a vote compares two models, got {len(answers)}")
    if winner != TIE and winner not in answers:
        raise TunesmithError(f"winner '{winner}' is neither of {', '.join(answers)} nor 'tie'")
    if not prompt.strip():
        raise TunesmithError("a vote needs the prompt both models answered")
    vote = {
        "time": round(time.time(), 3),
        "prompt": prompt,
        "models": list(answers),
        "answers": answers,
        "winner": winner,
        "reason": reason.strip(),
    }
    path = votes_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:  # one line per vote: appends never clash
        handle.write(json.dumps(vote, ensure_ascii=False) + "\n")
    return vote


def read_votes(run_dir: str | Path, model: str | None = None, opponent: str | None = None):
    """The votes of a run; with model and opponent, only those between the two."""
    path = votes_path(run_dir)
    votes = read_jsonl(path) if path.is_file() else []
    if model is None or opponent is None:
        return votes
    return [v for v in votes if set(v["models"]) == {model, opponent}]


def wilson_interval(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) with no observations."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def votes_needed(wins: int, n: int, margin: float, z: float = Z95) -> int:
    """Decisive votes still needed for the interval's half-width to reach `margin`, at the
    observed win rate (0.5, the worst case, before any vote)."""
    if not 0 < margin < 0.5:
        raise TunesmithError(f"margin must be between 0 and 0.5, got {margin}")
    p = wins / n if n else 0.5
    p = min(max(p, 0.05), 0.95)  # a rate of 0 or 1 from few votes would claim certainty
    total = math.ceil(z * z * p * (1 - p) / (margin * margin))
    return max(0, total - n)


def arena_stats(votes: list[dict], model: str, opponent: str, margin: float = 0.1) -> dict:
    """`model`'s record against `opponent`: wins, losses, ties, win rate over decisive votes,
    its 95% Wilson interval, whether it excludes 50%, and the votes still needed."""
    between = [v for v in votes if set(v["models"]) == {model, opponent}]
    wins = sum(v["winner"] == model for v in between)
    losses = sum(v["winner"] == opponent for v in between)
    ties = len(between) - wins - losses
    decisive = wins + losses
    low, high = wilson_interval(wins, decisive)
    return {
        "model": model,
        "opponent": opponent,
        "votes": len(between),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": wins / decisive if decisive else None,
        "ci_low": low,
        "ci_high": high,
        "significant": decisive > 0 and (low > 0.5 or high < 0.5),
        "margin": margin,
        "votes_needed": votes_needed(wins, decisive, margin),
    }


def export_pairs(votes: list[dict], out: str | Path) -> dict:
    """The decisive votes as alpaca preference pairs (the winner's answer chosen); ties are
    left out because they prefer neither answer."""
    pairs = []
    for vote in votes:
        if vote["winner"] == TIE:
            continue
        loser = next(m for m in vote["models"] if m != vote["winner"])
        pairs.append(
            {
                "instruction": vote["prompt"],
                "input": "",
                "chosen": vote["answers"][vote["winner"]],
                "rejected": vote["answers"][loser],
            }
        )
    if not pairs:
        raise TunesmithError("no decisive votes yet (ties prefer neither answer): none to export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return {"output": str(out), "pairs": len(pairs), "ties_left_out": len(votes) - len(pairs)}


def prompts_from_file(path: str | Path, limit: int = 200) -> list[str]:
    """The last user turn of each record of a data file (any format tunesmith reads): the
    prompts both models answer."""
    conversations, _ = load_conversations([path])
    prompts = []
    for conversation in conversations:
        users = [m["content"] for m in conversation.messages if m["role"] == "user"]
        if users and users[-1].strip():
            prompts.append(users[-1])
    if not prompts:
        raise TunesmithError(f"{Path(path).name}: no user prompts found")
    return prompts[:limit]
