"""Time one checkout's item search (``item_search``, ``beam_search`` before the split) on the decoding benchmark's setting, to compare two versions of the code.

    git worktree add /tmp/old <commit>
    python benchmarks/decoding_versions.py --root /tmp/old
    python benchmarks/decoding_versions.py --root .

The package is imported from ``--root`` (so the same script times any checkout whose item search
and ``Trie.build`` take these arguments). The setting is ``benchmarks/decoding.py``'s: a random-weight
4+4-layer T5 (seed 0), a synthetic catalog of ``--items`` IDs, 4 prompts of 10 history IDs, beam sizes
``--beams``; it prints the best and the median of ``--repeats`` timed searches after a warm-up, per beam size,
and a digest of the returned items (equal digests: the two versions return the same top-k).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="checkout whose foundation_rec is timed")
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.root.resolve()))
    import foundation_rec  # imported from --root first: decoding.py's own path entry then finds it already loaded
    from foundation_rec import decoding
    from foundation_rec.trie import Trie

    sys.path.insert(1, str(Path(__file__).resolve().parent))
    from decoding import load_model, make_prompts, synthetic_ids

    print(f"foundation_rec from {Path(foundation_rec.__file__).parent}", flush=True)

    model, eos, pad, start, _ = load_model("t5", "cpu")
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = synthetic_ids(args.items, vocab, eos, seed=args.items)
    trie = Trie.build(ids, vocab_size=vocab, eos_token_id=eos)
    input_ids, mask = make_prompts(ids, 4, 10, pad, left=start is None, seed=args.items + 1)
    if hasattr(decoding, "item_search"):
        search = decoding.item_search
    else:  # checkouts before the item/ID split
        search = lambda m, i, a, t, **kw: decoding.beam_search(m, i, a, trie=t, max_new_tokens=t.max_depth, **kw)
    for k in args.beams:
        times, out = [], None
        for rep in range(args.repeats + 1):
            t0 = time.perf_counter()
            out = search(model, input_ids, mask, trie, num_beams=k, eos_token_id=eos, pad_token_id=pad)
            if rep:
                times.append(time.perf_counter() - t0)
        digest = hashlib.sha1(out.items.numpy().tobytes()).hexdigest()[:12]
        print(f"root {args.root} items {args.items} beams {k}: best {1000 * min(times):.0f} ms, median {1000 * statistics.median(times):.0f} ms, "
              f"items digest {digest}", flush=True)


if __name__ == "__main__":
    main()
