"""No import cycle anywhere in kiln, between any two modules.

pyproject.toml's import-linter contracts keep the layers and forbid cycles between sibling
packages and modules (`acyclic_siblings`); that contract does not see a cycle between a
package's `__init__` and one of its own modules, which this test does. grimp reads every
import, a function-level one too, so a cycle hidden behind a lazy import is found.
"""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import graph's cycles, as Tarjan's strongly connected components (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    for root in sorted(graph.modules):
        if root in index:
            continue
        # Iterative depth-first search: (module, the modules it imports still to visit).
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, pending = work[-1]
            imported = next(pending, None)
            if imported is not None:
                if imported not in index:
                    index[imported] = low[imported] = len(index)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append((imported, iter(sorted(
                        graph.find_modules_directly_imported_by(imported)))))
                elif imported in on_stack:
                    low[module] = min(low[module], index[imported])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One cycle through the component, each import with its line: what to break."""
    members = set(component)
    start = component[0]
    back = next(importer for importer in sorted(graph.find_modules_that_directly_import(start))
                if importer in members)
    chain = list(graph.find_shortest_chain(importer=start, imported=back) or (start, back))
    lines = []
    for importer, imported in zip(chain, [*chain[1:], start], strict=True):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details)
        lines.append(f"  {importer} -> {imported} ({where})")
    return f"cycle among {', '.join(component)}:\n" + "\n".join(lines)


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("kiln", include_external_packages=False, cache_dir=None)
    cycles = strongly_connected(graph)
    assert not cycles, "\n\n".join(describe(graph, component) for component in cycles)


def test_the_cycle_finder_finds_a_package_init_cycle():
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b"):
        graph.add_module(module)
    graph.add_import(importer="pkg.sub", imported="pkg.sub.a", line_number=1,
                     line_contents="from pkg.sub import a")
    graph.add_import(importer="pkg.sub.a", imported="pkg.sub", line_number=3,
                     line_contents="import pkg.sub")
    graph.add_import(importer="pkg.sub.b", imported="pkg.sub.a", line_number=1,
                     line_contents="import pkg.sub.a")
    assert strongly_connected(graph) == [["pkg.sub", "pkg.sub.a"]]
    text = describe(graph, ["pkg.sub", "pkg.sub.a"])
    assert "pkg.sub -> pkg.sub.a (l.1: from pkg.sub import a)" in text
    assert "pkg.sub.a -> pkg.sub (l.3: import pkg.sub)" in text
