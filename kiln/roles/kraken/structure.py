"""Whether a Kraken config has the shape of Kraken's own reference config for its component:
the same keys, the same nesting, the same kinds of values (for kiln's tests, and for anyone
checking a rendered config against a newer Kraken release's)."""

from __future__ import annotations

from typing import Any

# Where kiln's configs go beyond Kraken's reference on purpose: Kraken's registry backends
# take a TLS client section, which kiln sets for a plain-HTTP registry inside the cluster.
EXTENSIONS = frozenset({
    "backends[].backend.registry_blob.security.tls",
    "backends[].backend.registry_tag.security.tls",
})


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _key_paths(value: Any, prefix: str = "") -> set[str]:
    if not isinstance(value, dict):
        return set()
    paths = set()
    for key, item in value.items():
        paths.add(f"{prefix}.{key}")
        paths |= _key_paths(item, f"{prefix}.{key}")
    return paths


def differences(ours: Any, theirs: Any, path: str = "",
                extensions: frozenset[str] = EXTENSIONS) -> list[str]:
    """Where `ours` is not shaped as `theirs`: missing or extra keys, other kinds of value;
    each list item of ours must have the shape of one of the reference list's items."""
    if kind(ours) != kind(theirs):
        return [f"{path or '/'}: {kind(ours)}, Kraken's is {kind(theirs)}"]
    if isinstance(ours, dict):
        problems = [f"{path}.{key}".lstrip(".") + ": missing"
                    for key in theirs.keys() - ours.keys()]
        for key in ours.keys() - theirs.keys():
            where = f"{path}.{key}".lstrip(".")
            if where not in extensions:
                problems.append(f"{where}: not in Kraken's config")
        for key in ours.keys() & theirs.keys():
            problems += differences(ours[key], theirs[key], f"{path}.{key}".lstrip("."),
                                    extensions)
        return sorted(problems)
    if isinstance(ours, list):
        problems = []
        for index, item in enumerate(ours):
            shapes = [differences(item, candidate, f"{path}[]", extensions)
                      for candidate in theirs]
            if shapes and all(shapes):
                # Report against the reference item that looks most like ours.
                closest = max(range(len(theirs)), key=lambda i: (
                    len(_key_paths(item) & _key_paths(theirs[i])), -len(shapes[i])))
                problems += [f"{path}[{index}] ~ {line}" for line in shapes[closest]]
        return problems
    return []
