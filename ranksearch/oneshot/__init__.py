"""One-shot rank search: train one max-rank supernet, search per-site rank allocations by evaluation alone.

* ``nested``: LoRA / CoDyRA layers whose rank r is the first r components of a max-rank adapter (DyLoRA-style
  prefix nesting), so one set of weights holds every allocation.
* ``supernet``: the supernet trial (sandwich rule: max, min and random allocations every step), resumable.
* ``allocation``: the allocation space (sites, candidate ranks, parameter costs, budget, constraints), repair
  into the budget, Optuna proposals scored by masked evaluation, the Pareto front.
* ``pipeline``: ``search: {mode: one-shot}`` run by ``ranksearch sweep``: supernet, evaluations and top-K
  retrains on Ray, one MLflow parent run with children.
* ``export``: a front member as a plain open_clip checkpoint (merged with its mask).
"""
