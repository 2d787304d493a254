"""Facts the mirror role reads on nodes: file digests, listings, contents, nginx."""

from __future__ import annotations

import base64
import binascii
import json
import shlex

from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from kiln.roles.mirror.render import NODE_TOOL

MISSING = "__kiln_missing__"


class FileDigests(FactBase):
    """sha256 of each of `paths` (relative to `root`) that exists: {path: hex digest}.

    Read fresh every run, no cached digests: a file that rotted on the mirror is fetched
    again, not trusted because its name is right.
    """

    default = dict

    def command(self, root: str, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in sorted(paths))
        return (
            f"cd {shlex.quote(root)} 2>/dev/null || exit 0; "
            f"for f in {quoted}; do if [ -f \"$f\" ]; then sha256sum -- \"$f\"; fi; done"
        ) if paths else "true"

    def process(self, output: list[str]) -> dict[str, str]:
        digests = {}
        for line in output:
            digest, _, path = line.partition("  ")
            if len(digest) != 64 or not path:
                raise FactProcessError(f"sha256sum printed {line!r}")
            digests[path] = digest
        return digests


class TreeFiles(FactBase):
    """Every file under `root`/`subdirs` (relative paths), in-progress ones included."""

    default = set

    def command(self, root: str, subdirs: list[str]) -> str:
        quoted = " ".join(shlex.quote(subdir) for subdir in subdirs)
        return (
            f"cd {shlex.quote(root)} 2>/dev/null || exit 0; "
            f"for d in {quoted}; do if [ -d \"$d\" ]; then find \"$d\" -type f; fi; done"
        )

    def process(self, output: list[str]) -> set[str]:
        return {line for line in output if line}


class FileBytes(FactBase):
    """A file's exact bytes (None when it does not exist); for small files only."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then base64 -w0 {quoted}; echo; else echo {MISSING}; fi"

    def process(self, output: list[str]) -> bytes | None:
        text = "".join(output).strip()
        if text == MISSING:
            return None
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise FactProcessError(f"base64 of the file did not decode: {exc}") from None


class StaleSums(FactBase):
    """SHA256SUMS files under `root`/`subdirs` that are not what they should be:
    {directory: wanted text} (see roles.mirror.nodetool); None before the tool is there."""

    def requires_command(self, root: str, subdirs: list[str]) -> str:
        return NODE_TOOL

    def command(self, root: str, subdirs: list[str]) -> str:
        quoted = " ".join(shlex.quote(subdir) for subdir in subdirs)
        return f"{NODE_TOOL} sums {shlex.quote(root)} {quoted}"

    def process(self, output: list[str]) -> dict[str, str]:
        try:
            stale = json.loads("\n".join(output))
        except ValueError as exc:
            raise FactProcessError(f"kiln-mirror sums printed no JSON: {exc}") from None
        if not isinstance(stale, dict):
            raise FactProcessError("kiln-mirror sums printed JSON that is not an object")
        return stale


class NginxRunning(FactBase):
    """Whether nginx's master process (its pid file) is alive."""

    def command(self) -> str:
        return (
            "if [ -s /run/nginx.pid ] && kill -0 \"$(cat /run/nginx.pid)\" 2>/dev/null; "
            "then echo yes; else echo no; fi"
        )

    def process(self, output: list[str]) -> bool:
        return output[-1].strip() == "yes"


class NewerThan(FactBase):
    """Which of `paths` changed after `stamp` was touched (all that exist, when no stamp)."""

    default = list

    def command(self, stamp: str, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return (
            f"for f in {quoted}; do if [ -e \"$f\" ] && "
            f"{{ [ ! -e {shlex.quote(stamp)} ] || [ \"$f\" -nt {shlex.quote(stamp)} ]; }}; "
            "then echo \"$f\"; fi; done"
        )

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]
