"""The manifest's mlxconfig settings against what each card reports: what to set, what
needs a reset, what did not take.

mlxconfig prints a value as NAME(NUMBER) ("IB(1)", "True(1)") or a bare number; the manifest
gives either spelling (IB, 1, True). A value matches when its name or its number does.
`mlxconfig -e q` has three columns: Default, Current (what the card runs now) and Next Boot
(what it runs after the next firmware reset): a set changes Next Boot, a reset makes it
Current.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_CODED = re.compile(r"^(.*)\((-?\d+)\)$")


def wanted_text(value: str | int | bool) -> str:
    """A manifest value as `mlxconfig set` takes it."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def matches(wanted: str | int | bool, raw: str | None) -> bool:
    """Whether mlxconfig's `raw` ("IB(1)", "0", "True(1)") is the manifest's `wanted`."""
    if raw is None:
        return False
    want = wanted_text(wanted).strip().upper()
    coded = _CODED.match(raw.strip())
    name, number = (coded.group(1), coded.group(2)) if coded else (raw.strip(), None)
    return want in {name.upper(), *([number] if number is not None else [])}


@dataclass
class CardPlan:
    """One HCA: the settings to `set` (Next Boot differs) and whether it needs a reset
    (Current differs, after the set)."""

    device: str
    to_set: dict[str, str] = field(default_factory=dict)
    was: dict[str, str] = field(default_factory=dict)
    needs_reset: bool = False

    def set_command(self) -> str:
        pairs = " ".join(f"{key}={value}" for key, value in self.to_set.items())
        return f"mlxconfig -y -d {self.device} set {pairs}"

    def describe(self) -> str:
        changes = ", ".join(f"{key} {self.was.get(key, '?')} -> {value}"
                            for key, value in self.to_set.items())
        return f"{self.device}: {changes or 'set; reset pending'}"


@dataclass
class SettingsPlan:
    cards: list[CardPlan]
    problems: list[str]

    @property
    def changes(self) -> list[CardPlan]:
        return [card for card in self.cards if card.to_set or card.needs_reset]


def plan_settings(wanted: dict[str, str | int | bool], hcas: list[dict[str, Any]]
                  ) -> SettingsPlan:
    """What to do on each HCA of `hcas` (parse_hca_report's) for the manifest's settings."""
    cards, problems = [], []
    for hca in hcas:
        device = hca["device"]
        config = hca.get("mlxconfig")
        if config is None:
            why = hca.get("mlxconfig_error") or "mlxconfig gave no answer"
            problems.append(f"{device}: cannot read its settings: {why}")
            continue
        card = CardPlan(device)
        for key, value in wanted.items():
            entry = config.get(key)
            if entry is None:
                problems.append(f"{device}: {key}: the card has no such setting "
                                "(mlxconfig q does not list it)")
                continue
            if not matches(value, entry["raw"]):
                card.to_set[key] = wanted_text(value)
                card.was[key] = entry["raw"]
            current = entry.get("current", entry["raw"])
            if not matches(value, current):
                card.needs_reset = True
        cards.append(card)
    return SettingsPlan(cards, problems)


def not_taken(wanted: dict[str, str | int | bool], hcas: list[dict[str, Any]]) -> list[str]:
    """After set and reset: each HCA and key whose running (Current) value is not the
    manifest's, or that cannot be read."""
    wrong = []
    for hca in hcas:
        config = hca.get("mlxconfig")
        if config is None:
            wrong.append(f"{hca['device']}: settings unreadable "
                         f"({hca.get('mlxconfig_error') or 'no answer'})")
            continue
        for key, value in wanted.items():
            entry = config.get(key)
            current = None if entry is None else entry.get("current", entry["raw"])
            if not matches(value, current):
                wrong.append(f"{hca['device']}: {key} is {current or 'absent'}, "
                             f"not {wanted_text(value)}")
    return wrong
