"""A sweep on an in-process 2-node Ray cluster (``ray.cluster_utils.Cluster``) places trials on both nodes.

Runs after test_sweep.py has shut its Ray down (module fixtures; one Ray per process at a time).
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import yaml

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    # Cluster writes its address file into Ray's default temp dir; point that at a private, short folder so no
    # other Ray user on the machine picks up this test cluster (and socket paths stay under 107 bytes).
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


def test_sweep_uses_both_nodes(two_nodes, tmp_path):
    import ray

    from ranksearch.sweep.tuner import run_sweep

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": 2}},
                "params": {"adapter.r": [1, 2, 4, 8]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "random", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": 4,
                "concurrency": 2,
                "resources": {"cpu": 1},  # one trial fills a node: two at once need both nodes
            }
        )
    )
    result = run_sweep(
        space, name="nodes", storage=tmp_path / "runs", runner="synthetic",
        runner_options={"seconds_per_eval": 0.5}, live=False,
    )  # fmt: skip
    assert [r["status"] for r in result.rows] == ["completed"] * 4
    nodes = set()
    for record in result.folder.glob("trials/*/synthetic.json"):
        nodes |= {r["node_id"] for r in json.loads(record.read_text())}
    assert len(nodes) == 2, nodes
