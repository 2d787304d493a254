"""kiln's Xid (GPU) and SXid (NVSwitch) table (data/xid.yaml), validated when loaded, and
the verdict on one kernel event.

    load_xid_table(path=None) -> XidTable        the shipped table, or another file's
    classify_xid(code, message) -> XidVerdict
    classify_sxid(code, fatal, message) -> XidVerdict

An Xid the table does not list is WARN ("Xid N is not in kiln's table"): never OK, never
dropped. An SXid the table does not list takes the table's defaults: fatal CRITICAL,
non-fatal WARN, neither said WARN. A line that says "Fatal" is CRITICAL whatever its entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.core.checks import Action, Remediation, Status
from kiln.core.errors import ValidationFailed

DATA_DIR = Path(__file__).resolve().parent / "data"
XID_TABLE = DATA_DIR / "xid.yaml"

XidClass = Literal["hardware", "reset", "application", "driver", "nvlink", "thermal-power",
                   "informational"]
TableStatus = Literal["OK", "WARN", "CRITICAL"]
# the tools each disputed entry must say something about (see the table's header)
TOOLS = ("imbue", "azure", "google", "gcm", "dcgm", "gpud")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Verdict(_Model):
    """What the table says about an event: status, what to do, why."""

    status: TableStatus
    action: Action | None = None
    technician: str = Field(min_length=10)
    reason: str = Field(min_length=10)

    @model_validator(mode="after")
    def _critical_has_an_action(self) -> _Verdict:
        if self.status == "CRITICAL" and self.action is None:
            raise ValueError("a CRITICAL entry needs an action (what the technician does)")
        return self


class MessageRule(_Verdict):
    """An override for lines whose message matches `match` (a regular expression, searched
    case-insensitively)."""

    match: str

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class XidEntry(_Verdict):
    code: int = Field(gt=0)
    name: str = Field(min_length=1)
    mnemonic: str | None = None
    cls: XidClass = Field(alias="class")
    nvidia: str = Field(min_length=10)
    tools: dict[str, str] = Field(default_factory=dict)
    disputed: bool = False
    rules: list[MessageRule] = Field(default_factory=list)
    reason: str = Field(min_length=40)

    @model_validator(mode="after")
    def _disputes_are_explained(self) -> XidEntry:
        if self.disputed:
            missing = [tool for tool in TOOLS if tool not in self.tools]
            if missing:
                raise ValueError("a disputed entry says what each tool does; missing: "
                                 + ", ".join(missing))
            if len(self.reason) < 120:
                raise ValueError("a disputed entry's reason says why kiln sides as it does "
                                 "(at least 120 characters)")
        if self.status == "OK" and self.cls != "informational":
            raise ValueError("only an informational Xid may be OK")
        return self


class SxidDefault(_Verdict):
    cls: XidClass = Field(alias="class")


class SxidEntry(SxidDefault):
    code: int = Field(gt=0)
    name: str = Field(min_length=1)


class SxidDefaults(_Model):
    fatal: SxidDefault
    nonfatal: SxidDefault
    unknown: SxidDefault


class XidTable(_Model):
    xids: list[XidEntry]
    sxid_defaults: SxidDefaults
    sxids: list[SxidEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _codes_are_unique(self) -> XidTable:
        for kind, entries in (("xids", self.xids), ("sxids", self.sxids)):
            seen: set[int] = set()
            for entry in entries:
                if entry.code in seen:
                    raise ValueError(f"{kind}: code {entry.code} is listed twice")
                seen.add(entry.code)
        return self

    def xid(self, code: int) -> XidEntry | None:
        return next((e for e in self.xids if e.code == code), None)

    def sxid(self, code: int) -> SxidEntry | None:
        return next((e for e in self.sxids if e.code == code), None)


@dataclass(frozen=True)
class XidVerdict:
    status: Status
    cls: str  # the table's class; "unknown" for a code it does not list
    remediation: Remediation | None
    reason: str
    name: str
    code: int
    known: bool = True  # the table lists the code
    rule: str | None = None  # the message rule that decided, if one did
    technician: str = ""


def load_xid_table(path: Path | str | None = None) -> XidTable:
    """The table in `path` (default: the shipped data/xid.yaml), validated; errors name the
    file and the entry ("xid.yaml: xids[5] (Xid 48): status: ...")."""
    if path is None:
        return _shipped()
    return _load(Path(path))


@lru_cache(maxsize=1)
def _shipped() -> XidTable:
    return _load(XID_TABLE)


def _load(path: Path) -> XidTable:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationFailed([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ValidationFailed([f"{path}: not YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ValidationFailed([f"{path}: expected a mapping with xids, sxids, sxid_defaults"])
    try:
        return XidTable.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(_problems(path, raw, exc)) from None


def _problems(path: Path, raw: dict[str, Any], error: ValidationError) -> list[str]:
    """`file: xids[3] (Xid 48): field: message` for each problem."""
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        where = []
        if len(loc) >= 2 and loc[0] in ("xids", "sxids") and isinstance(loc[1], int):
            kind, index = loc[0], loc[1]
            entries = raw.get(kind) or []
            entry = entries[index] if index < len(entries) else None
            code = entry.get("code") if isinstance(entry, dict) else None
            label = "Xid" if kind == "xids" else "SXid"
            where.append(f"{kind}[{index}]" + (f" ({label} {code})" if code is not None else ""))
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        message = item["msg"]
        if item["type"] == "missing":
            message = "field required"
        elif item["type"] == "extra_forbidden":
            message = "unknown field (misspelt?)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        text = ": ".join(part for part in (str(path.name), *where, field, message) if part)
        problems.append(text)
    return problems


def _verdict(source: _Verdict, cls: str, name: str, code: int, *, known: bool = True,
             rule: str | None = None, reason: str | None = None) -> XidVerdict:
    remediation = (Remediation(source.action, source.technician)
                   if source.action is not None and source.status != "OK" else None)
    return XidVerdict(Status(source.status), cls, remediation, reason or source.reason, name,
                      code, known, rule, source.technician)


def classify_xid(code: int, message: str = "", table: XidTable | None = None) -> XidVerdict:
    """kiln's verdict on `NVRM: Xid (...): code, message`."""
    table = table or load_xid_table()
    entry = table.xid(code)
    if entry is None:
        return XidVerdict(Status.WARN, "unknown", Remediation(
            Action.RETRY, f"look Xid {code} up in NVIDIA's Xid catalog and add it to kiln's "
            "table (kiln/roles/health/data/xid.yaml)"),
            f"Xid {code} is not in kiln's table", f"Xid {code}", code, known=False,
            technician=f"Xid {code} is not in kiln's table: read NVIDIA's Xid catalog entry "
            "for it before deciding.")
    for rule in entry.rules:
        if re.search(rule.match, message or "", re.IGNORECASE):
            return _verdict(rule, entry.cls, entry.name, code, rule=rule.match)
    return _verdict(entry, entry.cls, entry.name, code)


_SEVERITY = re.compile(r"\bSeverity (\d+)\b")


def sxid_fatality(message: str) -> bool | None:
    """Whether an SXid line says its error is fatal: "Fatal" / "Non-fatal" in front of the
    detail, or the driver's follow-up "Severity 1" / "Severity 0"; None if it says neither."""
    head = (message or "").split(",", 1)[0].strip().lower()
    if head == "fatal":
        return True
    if head in ("non-fatal", "nonfatal"):
        return False
    severity = _SEVERITY.search(message or "")
    if severity:
        return severity.group(1) != "0"
    return None


def classify_sxid(code: int, fatal: bool | None, message: str = "",
                  table: XidTable | None = None) -> XidVerdict:
    """kiln's verdict on `nvidia-nvswitchN: SXid (...): code, [Fatal|Non-fatal,] message`;
    `fatal` is what the line said (parse_kernel_log's severity), None when it said neither
    (then the message's own "Severity N" decides, if it has one)."""
    table = table or load_xid_table()
    if fatal is None:
        fatal = sxid_fatality(message)
    entry = table.sxid(code)
    defaults = table.sxid_defaults
    if entry is None:
        chosen = defaults.fatal if fatal else defaults.nonfatal if fatal is False \
            else defaults.unknown
        return _verdict(chosen, chosen.cls, f"SXid {code}", code, known=False,
                        reason=f"SXid {code} is not in kiln's table; "
                        + ("fatal" if fatal else "non-fatal" if fatal is False
                           else "fatality not stated") + f": {chosen.reason}")
    if fatal and entry.status != "CRITICAL":
        # the driver called it fatal: the fabric is hurt, whatever the code usually means
        return _verdict(defaults.fatal, entry.cls, entry.name, code,
                        reason=f"logged Fatal by the driver: {defaults.fatal.reason}")
    return _verdict(entry, entry.cls, entry.name, code)
