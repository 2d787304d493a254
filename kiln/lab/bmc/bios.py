"""What a lab BMC knows about its node's BIOS setup: the attributes in effect, those pending.

A real BIOS keeps its setup in NVRAM; its BMC shows it as the Redfish Bios resource and
keeps a PATCH of Bios/Settings for the BIOS to apply at the next POST. The lab's:

- in effect: the node's hardware profile (`<lab>/hw/<node>/profile.json`, `bios_attributes`;
  a profile written before it had them is at the defaults, `BIOS_ATTRIBUTES` in
  lab/hwsim/profile.py);
- pending: `<lab>/hw/<node>/flash/bios-settings-pending.json`, which each accepted PATCH
  merges into and the node's next boot applies (lab/hwsim/lab_hooks.py
  `_apply_bios_settings`), whatever reset it (Redfish, IPMI, `kiln lab`), as a BIOS does.

Both are files, so they outlive the BMC's process. A PATCH naming an attribute the BIOS does
not have, or a value it does not accept, is refused whole (`AttributeRejected`, a 400):
nothing of it is staged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.lab.bmc.firmware import profile_path, spool_path
from kiln.lab.hwsim.profile import BIOS_ATTRIBUTES, BIOS_CHOICES, BIOS_PENDING, write_json

Attributes = dict[str, str | int | bool]


class BiosError(Exception):
    """The node's BIOS setup cannot be read or staged (message names node and file)."""


class AttributeRejected(BiosError):
    """Attributes the BIOS does not have, or values it does not take."""


def pending_path(lab: Path, node: str) -> Path:
    return spool_path(lab, node) / BIOS_PENDING


def current_attributes(lab: Path, node: str) -> Attributes:
    """The BIOS setup in effect: what the node booted with."""
    path = profile_path(lab, node)
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BiosError(f"node {node}: no hardware profile at {path}") from None
    except ValueError as exc:
        raise BiosError(f"{path}: not JSON ({exc})") from None
    attributes = profile.get("bios_attributes", BIOS_ATTRIBUTES)
    if not isinstance(attributes, dict):
        raise BiosError(f"{path}: bios_attributes is not a mapping of attributes")
    return dict(attributes)


def pending_attributes(lab: Path, node: str) -> Attributes:
    """Settings accepted since the last boot, which the next boot applies."""
    path = pending_path(lab, node)
    try:
        pending = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise BiosError(f"{path}: not JSON ({exc})") from None
    if not isinstance(pending, dict):
        raise BiosError(f"{path}: not a mapping of attributes")
    return pending


def next_boot_attributes(lab: Path, node: str) -> Attributes:
    """The setup the next boot will have: in effect, with the pending settings over it."""
    return {**current_attributes(lab, node), **pending_attributes(lab, node)}


def _refusal(name: str, value: Any, current: Attributes) -> str | None:
    """Why the BIOS does not take `value` for `name`; None when it does."""
    if name not in current:
        return f"{name!r} is not an attribute of this BIOS"
    choices = BIOS_CHOICES.get(name)
    if isinstance(choices, range):
        if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
            return (f"{name} takes an integer from {choices.start} to {choices.stop - 1}, "
                    f"not {value!r}")
    elif choices is not None:
        if value not in choices or not isinstance(value, str):
            return f"{name} takes one of {', '.join(choices)}, not {value!r}"
    elif type(value) is not type(current[name]):
        return f"{name} takes a {type(current[name]).__name__}, not {value!r}"
    return None


def stage(lab: Path, node: str, attributes: Any) -> Attributes:
    """Check `attributes` ({name: value}) and add them to the pending settings; returns all
    that are pending now. AttributeRejected (nothing staged) names every refusal."""
    if not isinstance(attributes, dict) or not attributes:
        raise AttributeRejected("Attributes must be a non-empty object of BIOS attributes")
    current = current_attributes(lab, node)
    refused = [why for name, value in attributes.items()
               if (why := _refusal(name, value, current)) is not None]
    if refused:
        raise AttributeRejected("; ".join(refused))
    spool = spool_path(lab, node)
    if not spool.is_dir():
        raise BiosError(f"node {node}: no flash spool at {spool}")
    pending = {**pending_attributes(lab, node), **attributes}
    write_json(pending_path(lab, node), pending)
    return pending


def stage_defaults(lab: Path, node: str) -> Attributes:
    """Bios.ResetBios: the next boot returns every attribute to its default."""
    current = current_attributes(lab, node)
    defaults = {name: BIOS_ATTRIBUTES.get(name, value) for name, value in current.items()}
    return stage(lab, node, defaults)
