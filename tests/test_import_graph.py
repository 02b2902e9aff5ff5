"""raykd's packages import each other in one direction only: no circle between them, counting the
imports made inside functions too (those hide a circle, they do not remove it); and importing a
CLI module leaves the heavy stacks to the functions that need them."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

RAYKD = Path(__file__).parents[1] / "raykd"


def package_edges() -> dict[str, set[str]]:
    """``raykd.<package>`` -> the raykd packages (or top-level modules) it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for f in RAYKD.rglob("*.py"):
        module = ".".join(f.relative_to(RAYKD.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raykd."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("raykd.")]
            else:
                continue
            for name in names:
                a, b = ".".join(module.split(".")[:2]), ".".join(name.split(".")[:2])
                if a != b:
                    edges[a].add(b)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        path.pop()
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state and (cycle := visit(u)):
            return cycle
    return None


def test_the_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_raykd_packages_import_in_one_direction():
    edges = package_edges()
    assert "raykd.config" in edges and "raykd.train" in edges  # the walk saw the tree
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


# What importing a CLI module must not load: the heavy stacks its functions import once they are
# needed, so that `--help` and a bad command line exit without them (raykd.tune: before anything
# but argument parsing; raykd.run and raykd.final: before their inputs are checked).
KEPT_OUT = {
    "raykd.tune": ("torch", "mmengine", "mmcv", "mmdet", "optuna", "ray", "mlflow"),
    "raykd.run": ("mmengine", "mmcv", "mmdet", "ray", "mlflow"),
    "raykd.final": ("mmengine", "mmcv", "mmdet", "ray", "mlflow", "scipy"),
}


@pytest.mark.parametrize("module", sorted(KEPT_OUT))
def test_cli_modules_leave_the_heavy_stacks_to_their_functions(module):
    code = f"import sys, {module}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert not set(loaded) & set(KEPT_OUT[module]), f"importing {module} loads {sorted(set(loaded) & set(KEPT_OUT[module]))}"


def test_the_top_level_holds_the_command_lines_and_packages_only():
    """``raykd/`` reads as its structure: the two module CLIs (``raykd.final`` is a package with a
    ``__main__``) beside the packages; shared helpers live in ``common`` and ``cli``."""
    modules = {f.name for f in RAYKD.glob("*.py")} - {"__init__.py"}
    assert modules == {"tune.py", "run.py"}
    assert all((d / "__init__.py").is_file() for d in RAYKD.iterdir() if d.is_dir() and d.name != "__pycache__")


def test_registering_mmdet_leaves_scikit_learn_out_and_importable():
    """Every trial's workers register mmdet afresh: without scikit-learn (mmdet's MOT interpolation
    only), which the process can still import afterwards."""
    code = ("import sys; from raykd.models.builder import register_mmdet; register_mmdet(); "
            "from mmdet.registry import MODELS; print(MODELS.get('RetinaNet') is not None, 'sklearn' in sys.modules); "
            "import sklearn.gaussian_process; print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["True", "False", "True"], out


TRIAL_ACTOR = """
import sys, ray.cloudpickle as pickle
from raykd.search.trainable import trial_spec
from raykd.train.launch import build_trainer
space, config, storage = pickle.loads(sys.stdin.buffer.read())
build_trainer(trial_spec(space, config), "trial", storage)
print(' '.join({m.split('.')[0] for m in sys.modules}))
"""


@pytest.mark.parametrize("config", [{"method": "feature", "feature": {"lambda": 1.0}}, {"defaults": "feature"}])
def test_a_trial_actor_launches_its_run_without_torch(config, tmp_path):
    """A search's trial actor only turns its parameters into a run and launches it (the run's worker
    trains): from the space Tune hands it to a built trainer, it imports none of the training stack
    (~1.3 s of CPU per trial on the demo machine, before the trial's run can start)."""
    import ray.cloudpickle as pickle

    from raykd.spaces import load_space

    space = load_space(Path(__file__).parent / "data" / "tiny_space.yaml")
    blob = pickle.dumps((space, config, str(tmp_path)))
    loaded = subprocess.run([sys.executable, "-c", TRIAL_ACTOR], input=blob, check=True, capture_output=True).stdout.split()
    assert not {b"torch", b"mmdet", b"mmengine", b"optuna"} & set(loaded), loaded
