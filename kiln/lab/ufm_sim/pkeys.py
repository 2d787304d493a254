"""Partitions (PKeys) as UFM's `resources/pkeys` API manages them (reference §5).

A stored partition: `{"partition": name, "ip_over_ib": bool, "index0": bool,
"qos_conf": {"mtu_limit", "service_level", "rate_limit"}, "guids": {guid: {"membership",
"index0"}}}`, keyed by the PKey written `0x` + lower-case hex without padding (UFM's own
spelling is not confirmed by the reference; clients compare PKeys as numbers). The default
partition 0x7fff ("management") always holds every HCA port and cannot be changed.

Request bodies are checked the way UFM's JSON-schema validation does: unknown fields,
wrong types and missing required fields are a 400 naming the field; GUIDs the fabric does
not have are a 400 naming them.
"""

from __future__ import annotations

import re
from typing import Any

MANAGEMENT_PKEY = 0x7FFF
MEMBERSHIPS = ("full", "limited")
# The reference's example values for a partition created without QoS settings.
DEFAULT_QOS = {"mtu_limit": 2, "service_level": 0, "rate_limit": 2.5}
_PKEY = re.compile(r"0x[0-9a-fA-F]{1,4}")
_GUID = re.compile(r"(0x)?[0-9a-fA-F]{16}")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def pkey_key(value: int) -> str:
    return f"0x{value:x}"


def parse_pkey(text: Any, where: str = "pkey") -> int:
    """A PKey as the API takes it: a hex string, 0x0 < value < 0x7fff."""
    if not isinstance(text, str) or not _PKEY.fullmatch(text):
        raise ApiError(400, f"{where}: {text!r} is not a hex string like '0x0a12'")
    value = int(text, 16)
    if not 0 < value < MANAGEMENT_PKEY:
        raise ApiError(400, f"{where}: {text} is outside 0x0 .. 0x7fff (both exclusive)")
    return value


def lookup_pkey(text: str) -> int:
    """A PKey named in a URL: the management key may be read, not written."""
    if isinstance(text, str) and _PKEY.fullmatch(text) and int(text, 16) == MANAGEMENT_PKEY:
        return MANAGEMENT_PKEY
    return parse_pkey(text)


def parse_guid(text: Any, where: str) -> str:
    if not isinstance(text, str) or not _GUID.fullmatch(text):
        raise ApiError(400, f"{where}: {text!r} is not a port GUID (16 hex digits)")
    return text.lower().removeprefix("0x")


def _check_fields(
    body: Any, required: dict[str, type | tuple], optional: dict[str, type | tuple]
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "request body: expected a JSON object")
    extra = sorted(set(body) - set(required) - set(optional))
    if extra:
        raise ApiError(
            400, f"Additional properties are not allowed ({', '.join(map(repr, extra))} "
            f"{'was' if len(extra) == 1 else 'were'} unexpected)"
        )
    for name, kind in {**required, **optional}.items():
        if name not in body:
            if name in required:
                raise ApiError(400, f"{name!r} is a required property")
            continue
        value = body[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise ApiError(400, f"field {name!r}: {value!r} is not of the expected type")
    return body


def _kinds(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _membership(value: Any, where: str) -> str:
    if value not in MEMBERSHIPS:
        raise ApiError(400, f"{where}: {value!r} is not one of 'full', 'limited'")
    return value


def _known_guids(guids: list[str], known: set[str]) -> None:
    unknown = [g for g in guids if g not in known]
    if unknown:
        raise ApiError(400, f"guids: not ports of this fabric: {', '.join(unknown)}")


def _new_partition(value: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "partition": body.get("partition_name") or f"api_pkey_{pkey_key(value)}",
        "ip_over_ib": body.get("ip_over_ib", True),
        "index0": body.get("index0", False),
        "qos_conf": {k: body.get(k, v) for k, v in DEFAULT_QOS.items()},
        "guids": {},
    }


_GUIDS_BODY = {
    "required": {"guids": list, "pkey": str},
    "optional": {"index0": bool, "ip_over_ib": bool, "membership": str, "memberships": list},
}


def _members(body: dict[str, Any], known: set[str]) -> list[tuple[str, str]]:
    """(guid, membership) pairs of an add/set body, checked."""
    guids = [parse_guid(g, f"guids[{i}]") for i, g in enumerate(body["guids"])]
    if not guids:
        raise ApiError(400, "guids: give at least one port GUID")
    memberships = body.get("memberships") or []
    if memberships and "membership" in body:
        raise ApiError(400, "membership and memberships: give one of them, not both")
    if memberships:
        if len(memberships) != len(guids):
            raise ApiError(400, f"memberships: {len(memberships)} values for {len(guids)} guids")
        chosen = [_membership(m, f"memberships[{i}]") for i, m in enumerate(memberships)]
    else:
        chosen = [_membership(body.get("membership", "full"), "membership")] * len(guids)
    _known_guids(guids, known)
    return list(zip(guids, chosen, strict=True))


def add_guids(pkeys: dict[str, Any], body: Any, known: set[str], replace: bool = False) -> None:
    """POST resources/pkeys (add; creates the partition) and PUT (set: replaces members)."""
    body = _check_fields(body, **_GUIDS_BODY)
    value = parse_pkey(body["pkey"])
    members = _members(body, known)
    partition = pkeys.setdefault(pkey_key(value), _new_partition(value, body))
    if "ip_over_ib" in body:
        partition["ip_over_ib"] = body["ip_over_ib"]
    if replace:
        partition["guids"] = {}
    # index0 is per port (where in each port's PKey table this key goes), so per request.
    for guid, membership in members:
        partition["guids"][guid] = {"membership": membership, "index0": body.get("index0", False)}


def create_empty(pkeys: dict[str, Any], body: Any) -> None:
    """POST resources/pkeys/add: a partition with no members yet."""
    body = _check_fields(
        body,
        required={"pkey": str},
        optional={"partition_name": str, "index0": bool, "ip_over_ib": bool,
                  "mtu_limit": int, "service_level": int, "rate_limit": (int, float)},
    )
    value = parse_pkey(body["pkey"])
    if pkey_key(value) in pkeys:
        raise ApiError(400, f"pkey {pkey_key(value)} already exists")
    pkeys[pkey_key(value)] = _new_partition(value, body)


def add_hosts(pkeys: dict[str, Any], body: Any, host_guids: dict[str, list[str]]) -> None:
    """POST resources/pkeys/hosts: every HCA port GUID of the named hosts."""
    body = _check_fields(
        body,
        required={"hosts_names": str, "pkey": str},
        optional={"index0": bool, "ip_over_ib": bool, "membership": str},
    )
    names = [n.strip() for n in body["hosts_names"].split(",") if n.strip()]
    unknown = [n for n in names if n not in host_guids]
    if not names or unknown:
        raise ApiError(400, f"hosts_names: unknown hosts: {', '.join(unknown) or '(none given)'}")
    guids = [g for n in names for g in host_guids[n]]
    known = {g for gs in host_guids.values() for g in gs}
    add_guids(pkeys, {**{k: v for k, v in body.items() if k != "hosts_names"}, "guids": guids},
              known)


def remove_guids(pkeys: dict[str, Any], pkey: str, guid_list: str) -> None:
    """DELETE resources/pkeys/<pkey>/guids/<g1>,<g2>: GUIDs not in it are ignored."""
    partition = _existing(pkeys, pkey)
    for i, text in enumerate(guid_list.split(",")):
        partition["guids"].pop(parse_guid(text, f"guids[{i}]"), None)


def remove_hosts(pkeys: dict[str, Any], pkey: str, names: str,
                 host_guids: dict[str, list[str]]) -> None:
    partition = _existing(pkeys, pkey)
    hosts = [n for n in names.split(",") if n]
    unknown = [n for n in hosts if n not in host_guids]
    if not hosts or unknown:
        raise ApiError(400, f"hosts: unknown hosts: {', '.join(unknown) or '(none given)'}")
    for name in hosts:
        for guid in host_guids[name]:
            partition["guids"].pop(guid, None)


def delete(pkeys: dict[str, Any], pkey: str) -> None:
    _existing(pkeys, pkey)
    del pkeys[pkey_key(parse_pkey(pkey))]


def _existing(pkeys: dict[str, Any], pkey: str) -> dict[str, Any]:
    key = pkey_key(parse_pkey(pkey, "pkey in the URL"))
    if key not in pkeys:
        raise ApiError(404, f"pkey {key} does not exist")
    return pkeys[key]


def management(all_guids: list[str]) -> dict[str, Any]:
    return {
        "partition": "management",
        "ip_over_ib": True,
        "index0": True,
        "qos_conf": dict(DEFAULT_QOS),
        "guids": {g: {"membership": "full", "index0": True} for g in all_guids},
    }


def partition_json(partition: dict[str, Any], guids_data: bool, qos_conf: bool) -> dict:
    out: dict[str, Any] = {
        "partition": partition["partition"],
        "ip_over_ib": partition["ip_over_ib"],
    }
    if guids_data:
        out["guids"] = [{"guid": g, **m} for g, m in partition["guids"].items()]
    if qos_conf:
        out["qos_conf"] = dict(partition["qos_conf"])
    return out
