"""Simulated `dmesg` (util-linux 2.38, Debian 12's): the node's kernel ring buffer, which is
its boot log plus the lines its faults add (Xid, SXid …), oldest first.

Timestamps as util-linux prints them (print_record() in sys-utils/dmesg.c):

    raw (default)   [    4.123456] msg
    -T, ctime       [Sun Feb 23 16:24:18 2025] msg        (day of month space-padded)
    iso             2025-02-23T16:24:18,123456+00:00 msg   (no brackets; local UTC offset)
    -d, delta       [    4.123456 <    0.000012>] msg
    -e/-H, reltime  [Feb23 16:24] msg at each new minute, [  +0.000012] msg within it
    -t, notime      msg

Wall-clock formats count from the boot time recorded in boot.json. `-x` (--decode) puts
`kern  :warn  : ` before the timestamp, `-r` (--raw) the syslog priority `<4>`; `-l LIST`
keeps those levels. A record printed on several lines (the kernel's message held newlines)
has its continuation lines indented under the first, as util-linux does.

Options util-linux has that do not change what a buffer dump prints (-k, -L, -P, -S, -w …)
are accepted and ignored; an option util-linux does not know is refused with its message
("dmesg: unrecognized option '--foo'"), exit status 1.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..view import load_view, run_tool

TIME_FORMATS = ("raw", "ctime", "iso", "delta", "reltime", "notime")
LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")

# Short options util-linux dmesg has -> whether it takes an argument; the long forms below.
SHORT = {
    "C": False, "c": False, "D": False, "d": False, "E": False, "e": False, "F": True,
    "f": True, "H": False, "h": False, "J": False, "k": False, "L": False, "l": True,
    "n": True, "P": False, "p": False, "r": False, "S": False, "s": True, "T": False,
    "t": False, "u": False, "V": False, "W": False, "w": False, "x": False,
}
LONG = {
    "clear": False, "read-clear": False, "console-off": False, "show-delta": False,
    "console-on": False, "reltime": False, "file": True, "facility": True, "human": False,
    "help": False, "json": False, "kernel": False, "color": None, "level": True,
    "console-level": True, "nopager": False, "force-prefix": False, "raw": False,
    "syslog": False, "buffer-size": True, "ctime": False, "notime": False, "userspace": False,
    "version": False, "follow-new": False, "follow": False, "decode": False,
    "time-format": True, "noescape": False,
}
SHORT_TO_LONG = {"d": "show-delta", "e": "reltime", "H": "human", "h": "help", "k": "kernel",
                 "l": "level", "r": "raw", "T": "ctime", "t": "notime", "u": "userspace",
                 "V": "version", "x": "decode", "f": "facility", "J": "json", "C": "clear"}


def level_of(line: str) -> str:
    """The printk level of a simulated kernel line. The driver prints its NVRM lines at
    KERN_WARNING (`kern  :warn  : … NVRM: Xid …` and `… NVRM: loading …` in the real
    decoded captures, tests/fixtures/dmesg); the module loader warns about taints and
    symbols it cannot bind; the rest of the simulated boot log is informational."""
    if line.startswith(("NVRM:", "nvidia_peermem: ")) or "taints kernel" in line:
        return "warn"
    if "module verification failed" in line:
        return "notice"
    return "info"


class UsageError(Exception):
    pass


def _parse(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"time": "raw", "decode": False, "raw": False, "levels": None,
                            "kernel_lines": True, "help": False, "version": False,
                            "print": True, "ignored": []}
    items: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in LONG:
                raise UsageError(f"dmesg: unrecognized option '{arg}'")
            if LONG[name] is True and not eq:
                if i >= len(argv):
                    raise UsageError(f"dmesg: option '{arg}' requires an argument")
                value, i = argv[i], i + 1
            items.append((name, value if (eq or LONG[name]) else None))
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                flag = arg[j]
                if flag not in SHORT:
                    raise UsageError(f"dmesg: invalid option -- '{flag}'")
                if flag == "L":  # -L[when]: an optional argument, attached only
                    items.append(("color", arg[j + 1:] or None))
                    break
                if SHORT[flag]:
                    value = arg[j + 1:]
                    if not value:
                        if i >= len(argv):
                            raise UsageError(f"dmesg: option requires an argument -- '{flag}'")
                        value, i = argv[i], i + 1
                    items.append((SHORT_TO_LONG.get(flag, flag), value))
                    break
                items.append((SHORT_TO_LONG.get(flag, flag), None))
                j += 1
        else:
            raise UsageError(f"dmesg: bad usage\n(unexpected argument '{arg}')")
    for name, value in items:
        if name == "ctime":
            opts["time"] = "ctime"
        elif name == "notime":
            opts["time"] = "notime"
        elif name == "show-delta":
            opts["time"] = "delta"
        elif name in ("reltime", "human"):
            opts["time"] = "reltime"
        elif name == "time-format":
            if value not in TIME_FORMATS:
                raise UsageError(f"dmesg: unknown time format: {value}")
            opts["time"] = value
        elif name == "decode":
            opts["decode"] = True
        elif name == "raw":
            opts["raw"] = True
        elif name == "level":
            wanted = [part.strip() for part in str(value).split(",") if part.strip()]
            for level in wanted:
                if level not in LEVELS:
                    raise UsageError(f"dmesg: unknown level '{level}'")
            opts["levels"] = set(wanted)
        elif name == "facility":
            # Every simulated line is the kernel's (facility kern).
            opts["kernel_lines"] = "kern" in str(value).split(",")
        elif name == "userspace":
            opts["kernel_lines"] = False  # the simulated buffer has no user lines
        elif name in ("clear", "console-off", "console-on", "console-level"):
            opts["print"] = False  # these act on the buffer and print nothing
        elif name == "help":
            opts["help"] = True
        elif name == "version":
            opts["version"] = True
        elif name in ("json", "file", "syslog", "buffer-size", "force-prefix", "noescape"):
            # util-linux has these; the lab prints its usual dump for them (the lab's nodes
            # read the one simulated buffer).
            opts["ignored"].append(name)
        # kernel, color, nopager, follow, follow-new, read-clear: the dump is the same.
    return opts


def _stamp_raw(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole:5d}.{int(round((seconds - whole) * 1e6)):06d}"


def _ctime(t: float) -> str:
    tm = time.localtime(t)
    return time.strftime(f"%a %b {tm.tm_mday:2d} %H:%M:%S %Y", tm)


def _iso(t: float) -> str:
    tm = time.localtime(t)
    micros = int(round((t - int(t)) * 1e6)) % 1000000
    offset = tm.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f",{micros:06d}{sign}{hours:02d}:{minutes:02d}"


def format_lines(records: list[tuple[float, str]], opts: dict[str, Any],
                 booted: float) -> list[str]:
    out = []
    last: float | None = None
    last_minute: tuple[int, int, int] | None = None
    for seconds, message in records:
        level = level_of(message)
        if opts["levels"] is not None and level not in opts["levels"]:
            continue
        fmt = opts["time"]
        delta = 0.0 if last is None else seconds - last
        last = seconds
        if fmt == "raw":
            stamp = f"[{_stamp_raw(seconds)}] "
        elif fmt == "ctime":
            stamp = f"[{_ctime(booted + seconds)}] "
        elif fmt == "iso":
            stamp = f"{_iso(booted + seconds)} "
        elif fmt == "delta":
            stamp = f"[{_stamp_raw(seconds)} <{delta:12.6f}>] "
        elif fmt == "reltime":
            tm = time.localtime(booted + seconds)
            minute = (tm.tm_yday, tm.tm_hour, tm.tm_min)
            if minute != last_minute:
                stamp = "[" + time.strftime(f"%b{tm.tm_mday:2d} %H:%M", tm) + "] "
            elif delta < 10:
                stamp = f"[  {delta:+8.6f}] "
            else:
                stamp = f"[ {delta:+9.6f}] "
            last_minute = minute
        else:
            stamp = ""
        prefix = ""
        if opts["raw"]:
            prefix = f"<{LEVELS.index(level)}>"
        elif opts["decode"]:
            prefix = f"{'kern':<6}:{level:<6}: "
        head = prefix + stamp
        first, *rest = message.split("\n")
        out.append(head + first)
        out += [" " * len(head) + line for line in rest]
    return out


def _main(argv: list[str]) -> int:
    try:
        opts = _parse(argv)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\nTry 'dmesg --help' for more information.\n")
        return 1
    if opts["help"]:
        sys.stdout.write("Usage:\n dmesg [options]\n\nDisplay or control the kernel ring "
                         "buffer.\n")
        return 0
    if opts["version"]:
        sys.stdout.write("dmesg from util-linux 2.38.1\n")
        return 0
    view = load_view()
    for name in opts["ignored"]:
        sys.stderr.write(f"dmesg: kiln lab: --{name} is not simulated; printing the buffer\n")
    if not opts["print"] or not opts["kernel_lines"]:
        return 0
    booted = float(view.boot.get("booted_at", time.time() - 3600))
    out = format_lines(view.log_lines(), opts, booted)
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)
