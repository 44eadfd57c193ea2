"""One-shot rank search: nested ranks are truncated adapters, the sandwich-trained supernet, export, budgets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ranksearch.config.load import validate_trial_config
from ranksearch.oneshot.nested import NestedCodyraLinear, NestedLoraLinear
from ranksearch.oneshot.spec import OneShotSpec

SPEC = OneShotSpec(ranks=[0, 1, 2, 4], sandwich_random=1, evaluations=4, top_k=1)


def tiny_config(family: str = "lora", **adapter) -> object:
    return validate_trial_config(
        {
            "model": {"name": "rs-tiny-clip", "pretrained": None, "device": "cpu"},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "adapter": {"family": family, **adapter},
            "placement": {"towers": "both", "matrices": ["q", "v", "o"]},
            "train": {"iterations": 4, "batch_size": 8, "augment": False},
            "eval": {"evals": 1, "zero_shot": False},
            "seed": 3,
        }
    )


def randomise(layers) -> None:
    """Non-zero B (a trained adapter's state) so every component changes the output."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in layers:
            for name, p in layer.named_parameters():
                if name.endswith("_B") or name.endswith("_gate"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def supernet_session(family: str):
    from ranksearch.oneshot.supernet import SupernetSession
    from ranksearch.trial import seed_everything

    config = tiny_config(family, r=SPEC.max_rank)
    seed_everything(config.seed)
    session = SupernetSession(config, 4, SPEC)
    randomise(session.layers)
    session.model.eval()
    return session


def random_allocation(keys: list[str], seed: int) -> dict[str, int]:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.as_tensor(SPEC.ranks)[torch.randint(len(SPEC.ranks), (len(keys),), generator=g)].tolist()
    ranks[0] = max(ranks[0], 1)  # at least one adapted site (a rank pattern of zeros adapts nothing)
    return dict(zip(keys, ranks, strict=True))


def encode(model, tiny_inputs):
    images, tokens = tiny_inputs
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("family", ["lora", "codyra"])
def test_nested_layer_equals_truncated_layer_exactly(family):
    from ranksearch.adapters.base import Site
    from ranksearch.adapters.codyra import CodyraLinear
    from ranksearch.adapters.lora import LoraLinear

    torch.manual_seed(0)
    base, site, R = nn.Linear(24, 20), Site("vision", 0, "q"), 6
    if family == "lora":
        nested = NestedLoraLinear(base, site, R, alpha=2.0, scaling="sqrt", dropout=0.0)
    else:
        nested = NestedCodyraLinear(base, site, R, gate_init="randn", dropout=0.0)
    randomise([nested])
    x = torch.randn(3, 5, 24)
    for k in range(R + 1):
        nested.set_rank(k)
        if k == 0:
            assert torch.equal(nested(x), base(x)) and nested.rank() == 0
            continue
        if family == "lora":
            plain = LoraLinear(base, site, k, alpha=2.0, scaling="sqrt", dropout=0.0)
            plain.lora_A.data.copy_(nested.lora_A[:k])
            plain.lora_B.data.copy_(nested.lora_B[:, :k])
        else:
            plain = CodyraLinear(base, site, k, gate_init="randn", dropout=0.0)
            plain.codyra_A.data.copy_(nested.codyra_A[:k])
            plain.codyra_B.data.copy_(nested.codyra_B[:, :k])
            plain.codyra_gate.data.copy_(nested.codyra_gate[:k])
        assert torch.equal(nested(x), plain(x)), k
        assert torch.equal(nested.delta_weight(), plain.delta_weight()), k
        assert nested.rank() == k and int(nested.rank_mask().sum()) == k


@pytest.mark.parametrize("family", ["lora", "codyra"])
def test_masked_supernet_equals_plain_rank_pattern_model(family, tiny_inputs):
    """A whole supernet at an allocation == an ordinary trial's model with that rank_pattern and the first r
    components of every site (bit for bit), both towers."""
    from ranksearch.adapters.inject import adapter_layers
    from ranksearch.oneshot.export import truncated_state
    from ranksearch.session import TrialSession
    from ranksearch.trial import seed_everything

    session = supernet_session(family)
    keys = [layer.site.key for layer in session.layers]
    alloc = random_allocation(keys, seed=1)
    assert 0 in alloc.values()  # the allocation drops a site: the plain model has fewer layers
    session.set_allocation(alloc)
    want = encode(session.model, tiny_inputs)

    config = tiny_config(family, r=SPEC.max_rank, rank_pattern=alloc)
    seed_everything(config.seed)
    plain = TrialSession(config, 4)
    assert len(adapter_layers(plain.model)) == sum(1 for r in alloc.values() if r > 0)
    assert {ly.site.key: ly.rank() for ly in plain.layers} == {k: r for k, r in alloc.items() if r > 0}
    missing, unexpected = plain.model.load_state_dict(truncated_state(session.model, alloc), strict=False)
    assert not unexpected
    plain.model.eval()
    got = encode(plain.model, tiny_inputs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert plain.trainable_params == sum(
        r * ly.params_per_rank() for ly, r in zip(session.layers, alloc.values(), strict=True)
    )


def test_rank_pattern_validation():
    from ranksearch.errors import ConfigError
    from ranksearch.session import TrialSession

    with pytest.raises(ConfigError, match="not a site key"):
        tiny_config(rank_pattern={"vision.x.q": 2})
    with pytest.raises(ConfigError, match="every rank is 0"):
        tiny_config(rank_pattern={"vision.0.q": 0})
    with pytest.raises(ConfigError, match=r"adapter.rank_pattern: \['vision.0.k'\] are not sites"):
        TrialSession(tiny_config(rank_pattern={"vision.0.k": 2}), 4)


def test_sandwich_draws_max_min_random_and_resume_exactly():
    from ranksearch.oneshot.supernet import SandwichSampler

    s = SandwichSampler(5, [0, 2, 4, 8], n_random=3, seed=1)
    d = s.draws()
    assert d[0] == [8] * 5 and d[1] == [2] * 5 and len(d) == 5
    assert all(r in (0, 2, 4, 8) for draw in d[2:] for r in draw)
    state = s.generator.get_state()
    nxt = s.draws()
    s2 = SandwichSampler(5, [0, 2, 4, 8], n_random=3, seed=99)
    s2.generator.set_state(state)
    assert s2.draws() == nxt


@pytest.mark.parametrize("distill", [True, False])
def test_sandwich_step_gradient_is_labels_for_max_and_teacher_for_the_rest(distill):
    """One supernet step's gradient = the mean of the max allocation's label loss and, for the min allocation,
    the soft cross-entropy to the max's detached predictions (in-place distillation) or its label loss."""
    import torch.nn.functional as F

    from ranksearch.data import build_task
    from ranksearch.oneshot.nested import apply_allocation
    from ranksearch.oneshot.supernet import SupernetSession
    from ranksearch.trial import seed_everything

    spec = SPEC.model_copy(update={"sandwich_random": 0, "distill": distill})
    config = tiny_config("lora", r=spec.max_rank, dropout=0.0)
    seed_everything(config.seed)
    session = SupernetSession(config, 4, spec)
    randomise(session.layers)  # B != 0: the sub-allocations predict differently from the max
    tr = session.trainer_for(build_task(config.data, session.image_size), 4)
    idx = torch.arange(config.train.batch_size)
    tr.sampler.next = lambda: idx
    params = tr.family.trainable_parameters()
    tr.model.train()

    def logits(ranks: list[int]) -> torch.Tensor:
        apply_allocation(session.layers, ranks)
        img = F.normalize(tr.model.encode_image(tr.batch_inputs(idx)), dim=-1)
        return tr.logit_scale * img @ tr.text_features().t()

    y = tr.targets[idx]
    teacher = logits(tr.sandwich.max)
    student = logits(tr.sandwich.min)
    sub = (
        -(torch.softmax(teacher.detach(), -1) * torch.log_softmax(student, -1)).sum(-1).mean()
        if distill
        else F.cross_entropy(student, y)
    )
    want = torch.autograd.grad((F.cross_entropy(teacher, y) + sub) / 2, params, allow_unused=True)
    got = []
    tr.apply_gradients = lambda loss, t0: got.extend(p.grad.clone() for p in params)
    tr.train_step()
    assert len(got) == len(params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["lora", pytest.param("codyra", marks=pytest.mark.slow)])
def test_merged_export_of_an_allocation_equals_masked_forward(family, tmp_path, tiny_inputs):
    """Supernet trained (a few sandwich steps), one allocation exported as a stock open_clip checkpoint: the
    checkpoint loaded by open_clip alone gives the masked supernet's features within 1e-5."""
    import open_clip

    from ranksearch.models.attention import UnfusedAttention
    from ranksearch.oneshot.export import export_allocation
    from ranksearch.oneshot.supernet import rebuild_supernet, run_supernet

    config = tiny_config(family, r=SPEC.max_rank)
    result = run_supernet(config, SPEC, output_dir=tmp_path / "supernet")
    assert result.status == "completed"
    # 4 steps x (max, min, 1 random) passes
    assert result.metrics["supernet/passes"] == 12
    session = rebuild_supernet(tmp_path / "supernet")
    alloc = random_allocation([ly.site.key for ly in session.layers], seed=2)
    session.set_allocation(alloc)
    want = encode(session.model, tiny_inputs)
    manifest = export_allocation(tmp_path / "supernet", alloc, tmp_path / "export")
    assert manifest["merged"] and manifest["allocation"] == alloc
    model = open_clip.create_model(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    assert not any(isinstance(m, UnfusedAttention) for m in model.modules())
    got = encode(model, tiny_inputs)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    # the supernet's update is not the max allocation's only: a different allocation gives different features
    session.set_allocation({k: SPEC.max_rank for k in alloc})
    assert not torch.allclose(encode(session.model, tiny_inputs)[0], want[0], atol=1e-5)
    assert json.loads((tmp_path / "export" / "rank_pattern.json").read_text())


@pytest.mark.slow  # two supernet runs (~3 s quiet, ~12 s on a loaded machine)
def test_supernet_resumes_exactly(tmp_path):
    """Killed after its first evaluation and resumed from that checkpoint, the supernet ends bit-identical."""
    from safetensors.torch import load_file

    from ranksearch.oneshot.supernet import run_supernet

    config = tiny_config("lora", r=SPEC.max_rank, dropout=0.25)
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"evals": 2})})
    states = []
    run_supernet(config, SPEC, output_dir=tmp_path / "a", on_eval=lambda e: states.append(e.state()))
    assert [s["step"] for s in states] == [2, 4]
    resumed = run_supernet(config, SPEC, output_dir=tmp_path / "b", resume=states[0])
    assert resumed.metrics["supernet/passes"] == 12
    a, b = (
        load_file(tmp_path / "a" / "adapter.safetensors"),
        load_file(tmp_path / "b" / "adapter.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- allocation search: the budget is never exceeded ----------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def allocation_spaces(draw):
    """A random allocation space: 1-24 sites, 2-6 candidate ranks, per-site costs, a budget the minimum fits."""
    from ranksearch.oneshot.allocation import AllocationSpace
    from ranksearch.space.spec import Constraint

    n = draw(st.integers(1, 24))
    ranks = sorted(draw(st.sets(st.integers(0, 64), min_size=2, max_size=6)))
    if ranks[-1] == 0:
        ranks.append(1)
    costs = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["rank", "params", "constraint"]))
    floor = ranks[0] * (n if kind == "rank" else sum(costs))
    top = ranks[-1] * (n if kind == "rank" else sum(costs))
    budget = draw(st.integers(floor, max(floor, top)))
    kw = {"rank": {"total_rank": budget}, "params": {"total_params": budget}}.get(kind, {})
    cons = [Constraint(metric="trainable_params", max=budget)] if kind == "constraint" else []
    space = AllocationSpace([f"vision.{i}.q" for i in range(n)], ranks, costs, constraints=cons, **kw)
    return space, budget, kind


def over(space, alloc, budget, kind) -> bool:
    return (space.rank_total(alloc) if kind == "rank" else space.params(alloc)) > budget


@settings(max_examples=300, deadline=None)
@given(allocation_spaces(), st.data())
def test_repair_never_exceeds_the_budget_and_only_lowers(case, data):
    space, budget, kind = case
    proposal = data.draw(
        st.lists(st.sampled_from(space.ranks), min_size=len(space.sites), max_size=len(space.sites))
    )
    fixed = space.repair(proposal)
    assert not over(space, fixed, budget, kind)
    assert all(r in space.ranks and r <= p for r, p in zip(fixed, proposal, strict=True))
    if not over(space, proposal, budget, kind):
        assert fixed == proposal


@settings(max_examples=12, deadline=None)
@given(allocation_spaces(), st.sampled_from(["tpe", "nsga2", "random"]))
def test_search_scores_only_allocations_within_the_budget(case, sampler):
    """Every allocation a search scores (and every front member) fits, whatever the sampler proposes."""
    from ranksearch.oneshot.allocation import search_allocations

    space, budget, kind = case
    scored = []

    def score(batch):
        scored.extend(batch)
        # a stand-in accuracy that rises with rank (the real scorer is the supernet; this test is about budgets)
        return [{"val/hm": float(sum(r**0.5 for r in a))} for a in batch]

    evals = search_allocations(
        space, score, evaluations=15, metric="val/hm", sampler=sampler, batch=4, enqueue=[space.maximum()]
    )
    assert len(evals) == 15 and scored
    assert not any(over(space, a, budget, kind) for a in scored)
    assert len(set(map(tuple, scored))) == len(scored)  # an allocation proposed twice is scored once
    assert evals[0].proposed == space.maximum()  # enqueued first, repaired if over
    front = sorted(
        (e for e in evals if e.front), key=lambda e: (-e.metrics["val/hm"], e.metrics["trainable_params"])
    )
    assert front and all(not over(space, e.ranks, budget, kind) for e in front)
    ps = [e.metrics["trainable_params"] for e in front]
    accs = [e.metrics["val/hm"] for e in front]
    assert accs == sorted(accs, reverse=True) and ps == sorted(
        ps, reverse=True
    )  # a front: more params, more acc


def test_budget_below_the_smallest_allocation_is_one_line_error():
    from ranksearch.errors import ConfigError
    from ranksearch.oneshot.allocation import AllocationSpace

    with pytest.raises(ConfigError, match=r"^search.budget: even the smallest allocation"):
        AllocationSpace(["vision.0.q", "text.0.q"], [1, 2], [10, 10], total_params=15)


ONESHOT_SPACE = {
    "base": {"adapter": {"family": "lora"}},
    "search": {"mode": "one-shot", "ranks": [0, 1, 2, 4]},
    "objective": {"metric": "val/hm", "mode": "max"},
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"params": {"train.lr": [0.1, 0.01]}}, "params: one-shot search varies the per-site ranks only"),
        (
            {"search": {"mode": "one-shot", "ranks": [4, 2]}},
            "search.ranks: ranks must be distinct and ascending",
        ),
        (
            {"search": {"mode": "one-shot", "top_k": 9, "evaluations": 3}},
            "search.top_k: retrains 9 of only 3",
        ),
        ({"search": {"mode": "one-shot", "samplr": "tpe"}}, "search.samplr"),
        ({"base": {"adapter": {"family": "dra"}}}, "base.adapter.family: one-shot search nests"),
        ({"search": {"mode": "one-shot", "score_images": 0}}, "search.score_images"),
        ({"search": {"mode": "one-shot", "score_images": "half"}}, "search.score_images"),
        ({"search": {"mode": "one-shot", "score": "loss"}}, "search.score"),
        (
            {
                "search": {"mode": "one-shot", "score": "likelihood"},
                "objective": {"metric": "val/hm", "mode": "min"},
            },
            "search.score: likelihood ranks higher as better",
        ),
    ],
)
def test_one_shot_space_errors_name_the_field(change, message):
    from ranksearch.errors import ConfigError
    from ranksearch.space.load import validate_space

    data = {**json.loads(json.dumps(ONESHOT_SPACE)), **change}
    with pytest.raises(ConfigError) as e:
        validate_space(data)
    assert message in str(e.value)


@pytest.mark.slow  # importing scipy.stats costs seconds
def test_kendall_tau_matches_scipy_tau_b():
    scipy_stats = pytest.importorskip("scipy.stats")
    from ranksearch.oneshot.pipeline import kendall_tau

    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randint(0, 6, (15,), generator=rng).tolist()  # ties on purpose
        y = torch.randint(0, 6, (15,), generator=rng).tolist()
        assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


def test_oneshot_table_shows_estimate_retrained_and_tau():
    from rich.console import Console

    from ranksearch.oneshot.report import oneshot_table

    summary = {
        "metric": "val/hm", "kendall_tau": 0.6, "front_size": 4,
        "rows": [{"allocation": 7, "trainable_params": 2432, "estimate": 59.77, "retrained": 60.03,
                  "retrained_test": 41.67, "status": "completed"}],
        "compute": {"evaluations": 200, "supernet_steps": 300, "supernet_passes": 1200.0, "retrain_steps": 1500,
                    "eval_seconds_mean": 0.12},
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(oneshot_table(summary))
    text = console.export_text()
    assert (
        "59.77" in text and "60.03" in text and "2,432" in text and "Kendall tau" in text and "0.60" in text
    )


def test_report_section_table_and_tau_of_a_summary():
    """The HTML report's one-shot section (ranksearch.report.html._add_oneshot renders these): one row per
    retrain with estimate, retrained result and their difference; τ over the retrains that have a result."""
    from ranksearch.oneshot.report import oneshot_figures, oneshot_html_table, oneshot_note

    summary = {
        "metric": "val/hm", "kendall_tau": 1.0, "front_size": 4,
        "rows": [{"allocation": 7, "trainable_params": 2432, "estimate": 59.77, "retrained": 60.03,
                  "retrained_test": 41.67, "status": "completed", "trial": "trials/retrain-7"},
                 {"allocation": 3, "trainable_params": 1024, "estimate": 55.0, "retrained": 58.5,
                  "retrained_test": 40.0, "status": "completed", "trial": "trials/retrain-3"},
                 {"allocation": 9, "trainable_params": 512, "estimate": 50.0, "retrained": None,
                  "retrained_test": None, "status": "pending", "trial": "trials/retrain-9"}],
        "compute": {"evaluations": 200, "supernet_steps": 300, "supernet_passes": 1200.0, "retrain_steps": 1500,
                    "eval_seconds_mean": 0.12},
    }  # fmt: skip
    table = oneshot_html_table(summary)
    assert table.count("<tr data-allocation=") == 3
    assert "retrain-7" in table and "59.77" in table and "60.03" in table and "+0.26" in table
    assert "2,432" in table and "pending" in table
    note = oneshot_note(summary)
    assert "Kendall τ (one-shot estimate vs retrained val/hm, 2 retrained allocations): 1.00." in note
    evals = [
        {"number": i, "val/hm": 50.0 + i, "trainable_params": 100 * i, "front": i % 2 == 0} for i in range(6)
    ]
    names = [name for name, _ in oneshot_figures(summary, evals)]
    assert names == ["fig-oneshot-retrained", "fig-oneshot-front"]
    assert [t.name for t in oneshot_figures(summary, evals)[0][1].data] == [
        "retrained = estimate",
        "retrained allocation",
    ]
    # ranked by val/loglik (search.score: likelihood): no difference column, no y = x line, both names shown
    ll = {**summary, "estimate_metric": "val/loglik"}
    ll["rows"] = [{**r, "estimate": -r["estimate"] / 50} for r in summary["rows"]]
    table = oneshot_html_table(ll)
    assert "estimate val/loglik" in table and "retrained val/hm" in table and "+0.26" not in table
    assert (
        "Kendall τ (one-shot estimate val/loglik vs retrained val/hm, 2 retrained allocations)"
        in oneshot_note(ll)
    )
    lik = [{**e, "val/loglik": -1.0 + e["number"] / 10} for e in evals]
    figs = dict(oneshot_figures(ll, lik))
    assert [t.name for t in figs["fig-oneshot-retrained"].data] == ["retrained allocation"]
    assert list(figs["fig-oneshot-front"].data[0].y) == [e["val/loglik"] for e in lik]


def test_export_of_an_unknown_allocation_is_one_line_exit_2(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ranksearch.errors import ConfigError
    from ranksearch.oneshot.export import sweep_allocation

    with pytest.raises(ConfigError, match=r"^--allocation: .* is not a finished one-shot sweep") as e:
        sweep_allocation(tmp_path, 0)
    assert e.value.exit_code == 2
    (tmp_path / "search").mkdir()
    rows = [
        {"number": 0, "ranks": json.dumps({"vision.0.q": 2})},
        {"number": 3, "ranks": json.dumps({"vision.0.q": 1})},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "search" / "evaluations.parquet")
    assert sweep_allocation(tmp_path, 3) == {"vision.0.q": 1}
    with pytest.raises(ConfigError, match=r"^--allocation: 7: no such evaluation .*numbers 0\.\.3"):
        sweep_allocation(tmp_path, 7)


# --- scoring on a stratified sample of validation (search.score_images) -------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=300), st.integers(1, 400), st.integers(0, 3))
def test_stratified_sample_keeps_class_shares(labels, n, seed):
    from ranksearch.data.task import Split

    split = Split(
        torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 1, 1),
        torch.tensor(labels),
    )
    sample = split.stratified_sample(n, seed=seed)
    assert len(sample) == min(n, len(labels))
    index = sample.images[:, 0, 0, 0].long()  # each image holds its own index (mod 256)
    assert torch.equal(sample.labels, split.labels[index]) or len(labels) > 256
    counts, got = torch.bincount(split.labels, minlength=10), torch.bincount(sample.labels, minlength=10)
    assert bool((got <= counts).all())
    present = int((counts > 0).sum())
    if n >= present:  # every class keeps at least one image
        assert bool((got[counts > 0] >= 1).all())
    if n < len(labels) and bool((counts[counts > 0] * n >= len(labels)).all()):  # no class needed the floor
        assert bool(((got - counts * n / len(labels)).abs() < 1).all())
    assert torch.equal(sample.labels, split.stratified_sample(n, seed=seed).labels)  # the same for a seed


# --- ranking by log-likelihood (search.score: likelihood) --------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(1, 40), st.floats(1.0, 100.0))
def test_subset_log_likelihood_is_the_mean_log_probability_among_the_group(seed, n_classes, n, scale):
    from ranksearch.training.evaluate import subset_log_likelihood

    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(
        torch.randn(n_classes + 2, 8, generator=g, dtype=torch.float64), dim=-1
    )
    labels = torch.randint(0, n_classes + 2, (n,), generator=g)
    group = sorted(torch.randperm(n_classes + 2, generator=g)[:n_classes].tolist(), reverse=True)  # any order
    want = []  # per image of the group: log softmax over the group's classes, at the true class
    for f, y in zip(feats, labels.tolist(), strict=True):
        if y in group:
            z = [scale * float(f @ text[c]) for c in group]
            top = max(z)
            log_sum = top + math.log(sum(math.exp(v - top) for v in z))
            want.append(z[group.index(y)] - log_sum)
    got = subset_log_likelihood(feats, labels, text, group, scale)
    if not want:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(sum(want) / len(want), rel=1e-9, abs=1e-9)
