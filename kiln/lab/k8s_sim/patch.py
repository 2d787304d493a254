"""The three PATCH bodies the Kubernetes API server applies to a built-in object (a Node).

    application/strategic-merge-patch+json   maps merge key by key, `null` deletes a key;
        a list merges only where the Go type says `patchStrategy:"merge"` (by its
        `patchMergeKey`), every other list is atomic: the patch's list replaces it. On a
        Node that is (k8s.io/api/core/v1 types.go; the API reference marks the rest
        "Atomic: will be replaced during a merge", spec.taints among them):
            metadata.finalizers, spec.podCIDRs          merged, primitive lists
            metadata.ownerReferences                    merged by uid
            status.conditions, status.addresses         merged by type
    application/merge-patch+json   RFC 7386: maps merge, `null` deletes, every list replaced.
    application/json-patch+json    RFC 6902: a list of operations (add, remove, replace,
        move, copy, test) on JSON pointers; a failed `test` fails the whole patch.

Not simulated: strategic merge's directives (`$patch`, `$retainKeys`,
`$deleteFromPrimitiveList`, `$setElementOrder`): a patch that uses one is refused (the
simulator says so) rather than applied wrongly.
"""

from __future__ import annotations

import copy
from typing import Any

# (path of the list) -> its patchMergeKey; None for a merged list of primitives.
NODE_MERGE_LISTS: dict[tuple[str, ...], str | None] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
    ("spec", "podCIDRs"): None,
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
}


class PatchError(ValueError):
    """The patch cannot be applied: the server answers `status` with this message."""

    def __init__(self, message: str, status: int = 400, reason: str = "BadRequest"):
        super().__init__(message)
        self.status = status
        self.reason = reason


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any,
                          merge_lists: dict[tuple[str, ...], str | None] | None = None,
                          path: tuple[str, ...] = ()) -> Any:
    """A strategic merge patch as the API server applies it to a type whose merged lists are
    `merge_lists` (NODE_MERGE_LISTS by default)."""
    merge_lists = NODE_MERGE_LISTS if merge_lists is None else merge_lists
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise PatchError(f"strategic merge directive {key!r} at "
                             f"{'.'.join(path) or 'the top'}: not simulated by the Kubernetes "
                             "API simulator")
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and here in merge_lists:
            result[key] = _merge_list(result.get(key) or [], value, merge_lists[here], here)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value, merge_lists, here)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str | None,
                path: tuple[str, ...]) -> list[Any]:
    result = copy.deepcopy(current)
    for item in patch:
        if merge_key is None:
            if item not in result:
                result.append(copy.deepcopy(item))
            continue
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"{'.'.join(path)}: map: {item!r} does not contain declared "
                             f"merge key: {merge_key}")
        for i, existing in enumerate(result):
            if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                result[i] = strategic_merge_patch(existing, item, {}, path)
                break
        else:
            result.append(copy.deepcopy(item))
    return result


# -- RFC 6902 -------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(document: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"json patch: path {path!r}: missing value", 422, "Invalid")
    return node, parts[-1]


def _get(document: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return document
    parent, last = _parent(document, parts, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"json patch: path {path!r}: missing value", 422, "Invalid")


def _add(document: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(document, parts, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and (last == "-" or (last.isdigit()
                                                       and int(last) <= len(parent))):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        raise PatchError(f"json patch: add {path!r}: no such place", 422, "Invalid")
    return document


def _remove(document: Any, path: str) -> Any:
    _get(document, path)
    parts = _pointer(path)
    parent, last = _parent(document, parts, path)
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return document


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"json patch: operation {operation!r} has no op or path")
        op, path = operation["op"], operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"json patch: {op} {path!r} has no value")
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            document = _remove(document, path)
        elif op == "replace":
            _get(document, path)
            document = _add(_remove(document, path), path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            value = copy.deepcopy(_get(document, operation.get("from", "")))
            if op == "move":
                document = _remove(document, operation.get("from", ""))
            document = _add(document, path, value)
        elif op == "test":
            if _get(document, path) != operation["value"]:
                raise PatchError(f"json patch: test {path!r} failed: the value is not "
                                 f"{operation['value']!r}", 422, "Invalid")
        else:
            raise PatchError(f"json patch: unknown operation {op!r}")
    return document
