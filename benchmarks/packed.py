"""N trials of the same shape packed into one process (``torch.func.stack_module_state`` + ``vmap``)
against N plain trials, total training samples/s.

Packed: N ``LoopedTransformer`` s (default trial shape, different seeds) stacked; one step =
``vmap(functional_call)`` over the stacked weights, each model on its own batch of 512, loss =
sum of the N answer-token cross-entropies (gradients stay per model), one foreach AdamW over
the stacked tensors (elementwise, so identical to N separate AdamWs), bf16 autocast as shipped.

A. one thread: ``packed`` vs ``sequential`` (N shipped ``Trainer.train_step`` s round-robin in
   the same process), interleaved; for N in (2, 4); with the shipped attention (SDPA) and with the
   fast-path matmul attention (``prototypes``) in both arms.
B. both cores (full mode): ``packed`` N=2 in one process with 2 threads vs ``parallel``: 2
   processes x 1 thread each running one plain trial (the sweep's layout); each arm measured
   for a fixed number of steps, arms alternated.

The CPU probe saw no gain from packing (<= +7%).

    python -m benchmarks.packed           # full (~3 min quiet)
    python -m benchmarks.packed --quick   # smoke
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import torch.nn as nn

from benchmarks import common as C

#: One plain trial in its own process (B). Run with the repository root as the working
#: directory, so ``python -c`` finds the ``benchmarks`` package; argv: seed, steps, attention.
PARALLEL = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from benchmarks.prototypes import make_trainer
from benchmarks.models import default_config
from grokray.data import load_dataset
cfg = default_config(f"seed={sys.argv[1]}")
t = make_trainer(cfg, load_dataset(cfg.data), attention=sys.argv[3])
steps = int(sys.argv[2])
for _ in range(3):
    t.train_step()
print("READY", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
for _ in range(steps):
    t.train_step()
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "steps": steps}), flush=True)
"""


class AnswerHead(nn.Module):
    """Wraps a LoopedTransformer so ``forward`` = answer-position logits (what a step trains)."""

    def __init__(self, m):
        super().__init__()
        self.model = m

    def forward(self, tokens, pos):
        r = self.model.residual(tokens)                                                  # [B, T, d]
        picked = r.gather(1, pos[:, None, None].expand(-1, 1, r.shape[-1])).squeeze(1)  # [B, d]
        return self.model.decode(picked)                                                  # [B, V]


class Packed:
    """N models of one shape trained as one vmapped program."""

    def __init__(self, cfg, dataset, n: int, attention: str = "sdpa"):
        import torch
        from torch.func import stack_module_state

        from benchmarks.prototypes import patch_attention
        from grokray.model import LoopedTransformer

        self.n, self.B = n, cfg.train.batch_size
        heads = []
        for s in range(n):
            torch.manual_seed(s)
            heads.append(AnswerHead(patch_attention(LoopedTransformer(cfg.model, dataset.vocab_size), attention)))
        self.params, self.buffers = stack_module_state(heads)
        self.base = copy.deepcopy(heads[0]).to("meta")
        patch_attention(self.base, attention)
        tc = cfg.train
        decay = [p for p in self.params.values() if p.dim() >= 3]       # matrices (+1 stacked dim)
        no_decay = [p for p in self.params.values() if p.dim() < 3]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas,
                                     foreach=True)
        self.data = dataset.encode(dataset.train_rows())
        self.gen = torch.Generator().manual_seed(0)
        self.bf16 = tc.precision == "bf16"

    def _one(self, params, buffers, tokens, pos):
        from torch.func import functional_call
        return functional_call(self.base, (params, buffers), (tokens, pos))

    def train_step(self):
        import contextlib

        import torch
        import torch.nn.functional as F
        from torch.func import vmap

        idx = torch.randint(len(self.data), (self.n, self.B), generator=self.gen)
        tokens, pos, target = self.data.tokens[idx], self.data.answer_pos[idx], self.data.target[idx]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            logits = vmap(self._one)(self.params, self.buffers, tokens, pos)        # [N, B, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(self.n, -1)
        self.opt.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()
        self.opt.step()
        return loss.detach()


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--ns", default="2,4")
    ap.add_argument("--no-two-cores", action="store_true",
                    help="skip B (2 threads vs 2 processes): meaningless while other jobs load the CPU")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch

    from benchmarks.prototypes import make_trainer
    from benchmarks.models import default_config
    from grokray.data import load_dataset

    rounds = 2 if args.quick else 7
    steps = 2 if args.quick else 10
    ns = [2] if args.quick else [int(x) for x in args.ns.split(",")]
    attentions = ["sdpa"] if args.quick else ["sdpa", "auto"]
    cfg = default_config()
    ds = load_dataset(cfg.data)
    B = cfg.train.batch_size
    out: dict = {"config": {"rounds": rounds, "steps": steps, "ns": ns, "attentions": attentions}, "one_thread": {}}

    # ---------------------------------------------------------------- A: one thread
    torch.set_num_threads(1)
    for attention in attentions:
        for n in ns:
            packed = Packed(cfg, ds, n, attention=attention)
            seq = [make_trainer(default_config(f"seed={s}"), ds, attention=attention) for s in range(n)]

            run_packed = C.rate(packed.train_step, steps, n * B)
            run_seq = C.rate(lambda trainers=seq: [t.train_step() for t in trainers], steps, n * B)

            for _ in range(1 if args.quick else 3):
                run_packed(), run_seq()
            raw = C.interleave({"packed": run_packed, "sequential": run_seq}, rounds)
            r = C.paired_ratios(raw["packed"], raw["sequential"])
            out["one_thread"][f"{attention}_n{n}"] = {
                "attention": attention, "n": n, "samples_per_s_total": {k: C.summarize(v) for k, v in raw.items()},
                "packed_over_sequential": r}
            C.say(f"1 thread, attention={attention}, N={n}: packed {C.median(raw['packed']):.0f} vs sequential "
                  f"{C.median(raw['sequential']):.0f} samples/s -> x{r['median_of_paired']:.3f}")
            del packed, seq

    # ---------------------------------------------------------------- B: both cores
    if not args.quick and not args.no_two_cores:
        n, psteps = 2, 60
        attention = "sdpa"
        torch.set_num_threads(2)
        packed = Packed(cfg, ds, n, attention=attention)
        for _ in range(3):
            packed.train_step()

        run_packed2 = C.rate(packed.train_step, psteps, n * B)

        def run_parallel():
            procs = [subprocess.Popen([sys.executable, "-c", PARALLEL, str(s), str(psteps), attention],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=C.ROOT)
                     for s in range(n)]
            for p in procs:  # wait until both are warmed up, then start them together
                line = p.stdout.readline()
                if not line.startswith("READY"):
                    raise RuntimeError(p.stderr.read()[-2000:])
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            res = []
            for p in procs:
                o, e = p.communicate()
                if p.returncode:
                    raise RuntimeError(e[-2000:])
                res.append(next(json.loads(x[7:]) for x in o.splitlines() if x.startswith("RESULT ")))
            # total throughput while both ran: each process's own rate, summed
            return sum(B * r["steps"] / r["seconds"] for r in res)

        raw = C.interleave({"packed_2threads": run_packed2, "parallel_2proc_1thread": run_parallel}, 3)
        r = C.paired_ratios(raw["packed_2threads"], raw["parallel_2proc_1thread"])
        out["two_cores"] = {"n": n, "attention": attention, "steps_per_arm": psteps,
                            "samples_per_s_total": {k: C.summarize(v) for k, v in raw.items()},
                            "packed_over_parallel": r}
        C.say(f"2 cores, N=2: packed (2 threads) {C.median(raw['packed_2threads']):.0f} vs 2 processes x 1 thread "
              f"{C.median(raw['parallel_2proc_1thread']):.0f} samples/s -> x{r['median_of_paired']:.3f}")
        torch.set_num_threads(1)

    best = max(v["packed_over_sequential"]["median_of_paired"] for v in out["one_thread"].values())
    out["summary"] = {"best_packed_over_sequential_one_thread": best,
                      "packed_over_parallel_two_cores": out.get("two_cores", {}).get("packed_over_parallel", {})
                      .get("median_of_paired"),
                      "probe_said": "no gain on CPU (<= +7%)"}
    C.write_result("packed", args, out, started, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
