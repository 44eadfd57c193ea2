"""Score the interrupted oneshot_search run's trained allocations on its two saved supernets (issue 19).

Run with the run's code (PYTHONPATH at commit bbe9456 of branch h19, world as of 873c429): it reads the run's
work folder (supernet-distill/, supernet-labels/) and its RANKSEARCH_ONESHOT_CACHE file (10 top-5 retrains, then
the full search's trainings in order) and writes docs/oneshot/world-partial-2026-12-02.json.
"""

import json
import sys
import time
from pathlib import Path

import torch

from ranksearch.oneshot.pipeline import kendall_tau
from ranksearch.oneshot.scoring import SupernetScorer

torch.set_num_threads(1)

work = Path("/tmp/rs-bench-oneshot-9bfw9iwa")
text = Path("/tmp/h19-oneshot-cache.jsonl").read_text()
lines = [json.loads(line) for line in text.splitlines() if line.strip()]
rows = []
for i, line in enumerate(lines):
    cfg = json.loads(line["key"])
    kind = "top-distill" if i < 5 else "top-labels" if i < 10 else "full"
    rows.append(
        {"kind": kind, "seed": cfg["seed"], "pattern": cfg["adapter"]["rank_pattern"], **line["metrics"]}
    )
out = {"rows": rows, "variants": {}}
for name in ("distill", "labels"):
    t0 = time.process_time()
    sc = SupernetScorer(work / f"supernet-{name}")
    ppr = sc.session.params_per_rank()
    for r in rows:
        r["params"] = sum(r["pattern"][s] * c for s, c in zip(sc.sites, ppr, strict=True))
    scores = sc.score([[r["pattern"][s] for s in sc.sites] for r in rows])
    for r, m in zip(rows, scores, strict=True):
        r[f"estimate {name}"] = m["val/hm"]
        r[f"eval_seconds {name}"] = m["eval_seconds"]
    print(name, "scored", len(rows), "cpu", time.process_time() - t0, flush=True)
full = [r for r in rows if r["kind"] == "full"]
for name in ("distill", "labels"):
    top = [r for r in rows if r["kind"] == f"top-{name}"]
    est = [r[f"estimate {name}"] for r in full]
    out["variants"][name] = {
        "tau_full": kendall_tau(est, [r["val/hm"] for r in full]),
        "tau_full_test": kendall_tau(est, [r["test/hm"] for r in full]),
        "tau_top": kendall_tau([r[f"estimate {name}"] for r in top], [r["val/hm"] for r in top]),
        "tau_params": kendall_tau([r["params"] for r in full], est),
        "estimates": [min(est), max(est)],
        "best_top": max(r["val/hm"] for r in top),
    }
out["full_best"] = max(r["val/hm"] for r in full)
out["trained_range"] = [min(r["val/hm"] for r in full), max(r["val/hm"] for r in full)]
out["tau_val_test"] = kendall_tau([r["val/hm"] for r in full], [r["test/hm"] for r in full])
out["tau_params_trained"] = kendall_tau([r["params"] for r in full], [r["val/hm"] for r in full])
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
