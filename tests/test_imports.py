"""Imports go one way: config -> components (models, data, video I/O) -> pipelines -> training / ODE data ->
toy world -> command lines. The test walks every module of `causvid/` with `ast` (imports inside functions
count too: a lazy import is still a dependency) and fails on an import against that order or on a cycle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "causvid"

#: Rank of each unit (a top-level module or sub-package of causvid); a module may import only units of lower or
#: equal rank. Equal ranks may import each other as long as no cycle forms (checked separately).
RANKS = {
    "flow": 0, "rng": 0, "jsonfile": 0, "errors": 0, "wan_conventions": 0, "threads": 0,
    "config": 1,
    "models": 2, "data": 2, "video_io": 2, "runtime": 2,
    "pipelines": 3, "tiny_wan": 3,
    "training": 4, "ode_data": 4,
    "toy": 5,
    "train_ode": 6, "train_distillation": 6, "serve": 6, "export": 6,
}
#: Command lines kept at the path the seeds' READMEs run them from: entry points, outside the order (nothing in
#: the package may import them; they parse arguments and call the package).
ENTRY_POINTS = {"causvid.models.wan.generate_ode_pairs"}
#: Never imported by these units, whatever the ranks say (the rules of the project's README).
FORBIDDEN = {
    "models": {"pipelines", "training", "toy", "ode_data", "tiny_wan"},
    "pipelines": {"toy", "training", "ode_data"},
    "training": {"toy", "ode_data"},
}


def modules() -> dict:
    found = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = ("causvid",) + file.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = file
    return found


def imports(file: Path, known) -> set:
    """The causvid modules ``file`` imports (``from causvid.x import name`` counts as causvid.x.name when that
    is a module, as causvid.x otherwise)."""
    deps = set()

    def add(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != "causvid":
            deps.add(name)

    package = ".".join(("causvid",) + file.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "causvid":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "causvid":
                continue
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return deps


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict:
    mods = modules()
    return {name: imports(file, mods) - {name} for name, file in mods.items()}


def find_cycle(edges: dict):
    """One cycle of the directed graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def violations(edges: dict) -> list:
    bad = []
    for src, deps in sorted(edges.items()):
        if src in ENTRY_POINTS or unit(src) == "":
            continue
        for dst in sorted(deps):
            if dst in ENTRY_POINTS:
                bad.append(f"{src} imports the command line {dst}")
                continue
            a, b = unit(src), unit(dst)
            if a == b or b == "":
                continue
            if b in FORBIDDEN.get(a, ()):
                bad.append(f"{src} imports {dst}: {a} never imports {b}")
            elif RANKS[b] > RANKS[a]:
                bad.append(f"{src} imports {dst}: {a} (rank {RANKS[a]}) sits below {b} (rank {RANKS[b]})")
    return bad


def test_every_unit_has_a_rank():
    units = {unit(m) for m in modules()} - {""}
    assert units <= set(RANKS), f"give these a rank in RANKS: {sorted(units - set(RANKS))}"


def test_imports_go_one_way():
    assert violations(graph()) == []


def test_no_import_cycle_between_modules():
    edges = {m: d for m, d in graph().items() if m not in ENTRY_POINTS}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_no_import_cycle_between_units():
    edges = {}
    for src, deps in graph().items():
        if src not in ENTRY_POINTS:
            edges.setdefault(unit(src), set()).update(unit(d) for d in deps if unit(d) != unit(src))
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_checker_catches_what_it_claims():
    """The rules above on hand-made graphs: a model importing a pipeline, a pipeline importing the toy world,
    an import upwards by rank, a command line imported, and a cycle."""
    assert violations({"causvid.models.vae": {"causvid.pipelines.rollout"}})
    assert violations({"causvid.pipelines.cli": {"causvid.toy.folder"}})
    assert violations({"causvid.config": {"causvid.models.vae"}})
    assert violations({"causvid.toy.pipeline": {"causvid.models.wan.generate_ode_pairs"}})
    assert not violations({"causvid.training.trainer": {"causvid.pipelines.rollout", "causvid.models.vae"}})
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
