"""Data for the ReST-EM arithmetic demo: two-digit addition (or another arithmetic task, ``TASKS``), generated with
a fixed seed.

* ``seed.jsonl`` — a small SFT set of solved problems (gold answers) that turns the blank tiny model into a weak
  seed model, the "base" that ReST-EM improves.
* ``tasks.jsonl`` — the problems the loop works on: ``split = "train"`` problems whose answers are used only
  by the verifier (never trained on directly) and held-out ``split = "validation"`` problems for greedy pass@1.

Problems in the three sets are disjoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


# task name -> (operand pairs, prompt, answer): every task's problems are "<a><op><b>=?" with an integer answer
TASKS = {
    "add": (lambda: [(a, b) for a in range(100) for b in range(100)], "{a}+{b}=?", lambda a, b: a + b),
    "mul_digit": (lambda: [(a, b) for a in range(100) for b in range(10)], "{a}*{b}=?", lambda a, b: a * b),
    "sub": (lambda: [(a, b) for a in range(100) for b in range(a + 1)], "{a}-{b}=?", lambda a, b: a - b),
    "add3": (lambda: [(a, b) for a in range(1000) for b in range(10)], "{a}+{b}=?", lambda a, b: a + b),
    "mul3": (lambda: [(a, b) for a in range(1000) for b in range(10)], "{a}*{b}=?", lambda a, b: a * b),
    "diff": (lambda: [(a, b) for a in range(100) for b in range(100)], "|{a}-{b}|=?", lambda a, b: abs(a - b)),
    "digitsum": (lambda: [(a, 0) for a in range(10000)], "digitsum {a:04d}=?", lambda a, b: sum(map(int, f"{a:04d}"))),
    "double": (lambda: [(a, 0) for a in range(10000)], "2*{a}=?", lambda a, b: 2 * a),
    "rev": (lambda: [(a, 0) for a in range(1000, 10000)], "rev {a}=?", lambda a, b: str(a)[::-1]),
    "max": (lambda: [(a, b) for a in range(100) for b in range(100) if a != b], "max({a},{b})=?", lambda a, b: max(a, b)),
}


def problem(a: int, b: int, task: str = "add") -> str:
    return TASKS[task][1].format(a=a, b=b)


def make_data(out_dir: Path, *, seed: int = 0, n_seed: int = 400, n_train: int = 2000, n_val: int = 500,
              max_operand: int = 99, task: str = "add") -> dict[str, Path]:
    rng = random.Random(seed)
    pairs = TASKS[task][0]() if task != "add" else [(a, b) for a in range(max_operand + 1)
                                                     for b in range(max_operand + 1)]
    answer = TASKS[task][2]
    rng.shuffle(pairs)
    need = n_seed + n_train + n_val
    if need > len(pairs):
        raise ValueError(f"asked for {need} distinct problems but only {len(pairs)} exist")
    seed_pairs = pairs[:n_seed]
    train_pairs = pairs[n_seed:n_seed + n_train]
    val_pairs = pairs[n_seed + n_train:need]
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_path = out_dir / "seed.jsonl"
    with open(seed_path, "w") as fh:
        for a, b in seed_pairs:
            fh.write(json.dumps({"messages": [{"role": "user", "content": problem(a, b, task)},
                                              {"role": "assistant", "content": str(answer(a, b))}]}) + "\n")
    tasks_path = out_dir / "tasks.jsonl"
    with open(tasks_path, "w") as fh:
        for split, chunk in (("train", train_pairs), ("validation", val_pairs)):
            for a, b in chunk:
                fh.write(json.dumps({"id": problem(a, b, task)[:-2], "prompt": problem(a, b, task),
                                     "answer": str(answer(a, b)), "split": split}) + "\n")
    return {"seed": seed_path, "tasks": tasks_path}


if __name__ == "__main__":
    import sys

    paths = make_data(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
    sys.stderr.write(f"wrote {paths}\n")
