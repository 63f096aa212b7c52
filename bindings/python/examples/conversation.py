#!/usr/bin/env python3
"""A conversation that lives on disk: each run feeds your message to the
model state saved by the previous run, prints the reply, and saves the state
again. The model remembers everything said so far, in a few KB to MB of
state, without re-reading the history.

    python3 conversation.py MODEL_DIR "Hello, who are you?" [--state chat.state]
    python3 conversation.py MODEL_DIR "And what did I just ask?"
    python3 conversation.py MODEL_DIR --reset

The state file also stores the random generator position, so a conversation
replays identically from the same files and seed.
"""
import argparse
import json
import os
import sys

import blackmamba as bm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("message", nargs="?")
    ap.add_argument("--state", default="conversation.state", help="state file (default: %(default)s)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    ap.add_argument("-n", "--max-tokens", type=int, default=120)
    ap.add_argument("--temp", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--reset", action="store_true", help="forget the conversation")
    ap.add_argument("--raw", action="store_true", help="feed the message as is, without User:/Assistant: turns")
    args = ap.parse_args()

    meta_path = args.state + ".json"
    if args.reset:
        for p in (args.state, meta_path):
            if os.path.exists(p):
                os.remove(p)
        print("conversation forgotten")
        return 0
    if not args.message:
        ap.error("a message is needed (or --reset)")

    try:
        with bm.Model(args.model, backend=args.backend) as model:
            tok = bm.Tokenizer(args.tokenizer) if args.tokenizer else model.tokenizer
            if tok is None:
                print("error: the model has no tokenizer.json; pass --tokenizer", file=sys.stderr)
                return 2
            with model.new_state() as state, model.new_session() as session:
                seed = args.seed
                if os.path.exists(args.state):
                    with open(args.state, "rb") as f:
                        state.load(f.read())
                    with open(meta_path) as f:
                        seed = json.load(f)["rng_state"]
                    print(f"[resumed: the state has seen {state.n_tokens} tokens]", file=sys.stderr)
                if args.raw:
                    prompt, stop = args.message, []
                else:
                    prompt = ("\n" if state.n_tokens else "") + f"User: {args.message}\nAssistant:"
                    stop = ["\nUser:"]
                result = session.generate_text(state, prompt, max_tokens=args.max_tokens, temperature=args.temp,
                                               seed=seed, stop=stop, tokenizer=tok,
                                               on_piece=lambda text, _tok: print(text, end="", flush=True))
                print()
                tmp = args.state + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(state.save())
                os.replace(tmp, args.state)
                with open(meta_path, "w") as f:
                    json.dump({"rng_state": result.rng_state, "n_tokens": state.n_tokens}, f)
                print(f"[saved {os.path.getsize(args.state)} bytes of state to {args.state}]", file=sys.stderr)
    except bm.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
