"""Data for the ReST-EM arithmetic demo: two-digit addition, generated with a fixed seed.

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


def problem(a: int, b: int) -> str:
    return f"{a}+{b}=?"


def make_data(out_dir: Path, *, seed: int = 0, n_seed: int = 400, n_train: int = 2000, n_val: int = 500,
              max_operand: int = 99) -> dict[str, Path]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
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
            fh.write(json.dumps({"messages": [{"role": "user", "content": problem(a, b)},
                                              {"role": "assistant", "content": str(a + b)}]}) + "\n")
    tasks_path = out_dir / "tasks.jsonl"
    with open(tasks_path, "w") as fh:
        for split, chunk in (("train", train_pairs), ("validation", val_pairs)):
            for a, b in chunk:
                fh.write(json.dumps({"id": f"{a}+{b}", "prompt": problem(a, b), "answer": str(a + b),
                                     "split": split}) + "\n")
    return {"seed": seed_path, "tasks": tasks_path}


if __name__ == "__main__":
    import sys

    paths = make_data(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
    sys.stderr.write(f"wrote {paths}\n")
