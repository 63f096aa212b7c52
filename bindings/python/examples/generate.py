#!/usr/bin/env python3
"""Generate text with a BlackMamba model.

    python3 generate.py MODEL_DIR "Once upon a time" [-n 100] [--temp 0.8] [--seed 1]
                        [--tokenizer tokenizer.json] [--backend auto|cpu|cuda] [--ids]

The tokenizer is the model's own (tokenizer.json beside the weights) unless
--tokenizer names one. With --ids the prompt is a list of token ids
("1 2 3") and no tokenizer is needed for it (one is still needed for text out).
"""
import argparse
import sys

import blackmamba as bm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory or weights file")
    ap.add_argument("prompt")
    ap.add_argument("-n", "--max-tokens", type=int, default=100)
    ap.add_argument("--temp", type=float, default=None, help="temperature (0 = greedy; default 0.8)")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None, help="default: random")
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--ids", action="store_true", help="the prompt is token ids")
    args = ap.parse_args()

    try:
        with bm.Model(args.model, backend=args.backend) as model:
            tok = bm.Tokenizer(args.tokenizer) if args.tokenizer else model.tokenizer
            if tok is None:
                print("error: the model has no tokenizer.json; pass --tokenizer", file=sys.stderr)
                return 2
            prompt = [int(x) for x in args.prompt.split()] if args.ids else args.prompt
            with model.new_state() as state, model.new_session() as session:
                gen = session.generate(state, prompt, max_tokens=args.max_tokens, temperature=args.temp,
                                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop,
                                       tokenizer=tok)
                for piece in gen:
                    print(piece, end="", flush=True)
                print()
                r = gen.result
                print(f"[{r.n_prompt_tokens} prompt tokens, {r.n_generated} generated, stop: "
                      f"{r.stop.name.lower()}, {r.n_generated / max(r.generate_seconds, 1e-9):.1f} tokens/s]",
                      file=sys.stderr)
    except bm.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
