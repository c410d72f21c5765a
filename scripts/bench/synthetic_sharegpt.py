#!/usr/bin/env python3
"""Writes a synthetic ShareGPT-format file for `kite bench serve`.

There is no internet on the GPU machine, so ShareGPT itself is not at hand.
This draws conversation lengths from log-normal distributions fitted by eye
to ShareGPT V3's shape (first turn: median ~90 words, long tail to
thousands; answer: median ~200 words, tail to ~1500), filling them with
words sampled from a text file (e.g. ../shared/text/calib.txt). Seeded:
the same arguments give the same file.

  python3 scripts/bench/synthetic_sharegpt.py TEXT OUT.json [--n 3000] [--seed 0]
"""
import argparse
import json
import math
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", help="a text file whose words fill the turns")
    ap.add_argument("out", help="the ShareGPT-format JSON to write")
    ap.add_argument("--n", type=int, default=3000, help="conversations (the benchmark's filters drop some)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-median-words", type=float, default=90.0)
    ap.add_argument("--prompt-sigma", type=float, default=1.1)
    ap.add_argument("--answer-median-words", type=float, default=200.0)
    ap.add_argument("--answer-sigma", type=float, default=0.8)
    a = ap.parse_args()
    words = open(a.text, encoding="utf-8", errors="replace").read().split()
    if len(words) < 100:
        raise SystemExit(f"{a.text}: fewer than 100 words to draw from")
    rng = random.Random(a.seed)

    def turn(median, sigma):
        k = max(1, int(rng.lognormvariate(math.log(median), sigma)))
        start = rng.randrange(0, len(words))
        return " ".join(words[(start + i) % len(words)] for i in range(k))

    convs = []
    for i in range(a.n):
        convs.append({"id": f"synthetic-{i}", "conversations": [
            {"from": "human", "value": turn(a.prompt_median_words, a.prompt_sigma)},
            {"from": "gpt", "value": turn(a.answer_median_words, a.answer_sigma)}]})
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(convs, f, ensure_ascii=False)
    print(f"{a.out}: {len(convs)} conversations")


if __name__ == "__main__":
    main()
