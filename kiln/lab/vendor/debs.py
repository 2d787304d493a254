"""Turn a catalogue `Package` into a .deb with dpkg-deb, reproducibly.

The .deb's inputs (control file, payload, maintainer scripts) are hashed first; build.py
compares that digest with the last build's and skips packages whose inputs did not change,
which is what makes a second `build_repository` a no-op.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from .catalogue import MAINTAINER, NATIVE, Package

HWSIM_SOURCE = Path(__file__).resolve().parent.parent / "hwsim"
HWSIM_TARGET = "/usr/lib/python3/dist-packages/kiln_hwsim"
SIM_DAEMON = Path(__file__).resolve().parent / "payload" / "sim-daemon"
SIM_DAEMON_TARGET = "/usr/lib/kiln-hwsim/sim-daemon"
# Fixed timestamps inside the .debs: the same inputs give byte-identical packages.
SOURCE_DATE_EPOCH = 1735689600  # 2025-01-01


def tool_script(module: str) -> str:
    return (
        "#!/usr/bin/python3\n"
        "# kiln lab: simulated tool (lab/hwsim), installed by a simulated vendor package.\n"
        f"import sys; from kiln_hwsim.tools.{module} import main; sys.exit(main())\n"
    )


def _hwsim_files() -> list[tuple[str, bytes, int]]:
    """lab/hwsim as it lands in a node; an absent tree ships as an empty package."""
    files: list[tuple[str, bytes, int]] = []
    if HWSIM_SOURCE.is_dir():
        for path in sorted(HWSIM_SOURCE.rglob("*")):
            relative = path.relative_to(HWSIM_SOURCE)
            if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            files.append((f"{HWSIM_TARGET}/{relative.as_posix()}", path.read_bytes(), 0o644))
    files.append((SIM_DAEMON_TARGET, SIM_DAEMON.read_bytes(), 0o755))
    return files


def payload(package: Package) -> list[tuple[str, bytes, int]]:
    """Every file the package installs: (absolute path, contents, mode)."""
    files = [(path, text.encode(), mode) for path, text, mode in package.files]
    files += [(path, tool_script(module).encode(), 0o755) for path, module in package.tools]
    if package.ships_hwsim:
        files += _hwsim_files()
    return sorted(files)


def architecture(package: Package, native: str) -> str:
    return native if package.architecture == NATIVE else package.architecture


def control_text(package: Package, native: str, installed_size_kib: int) -> str:
    short, _, long = package.description.partition("\n")
    fields = [
        ("Package", package.name),
        ("Source", package.source or package.name),
        ("Version", package.version),
        ("Architecture", architecture(package, native)),
        ("Maintainer", MAINTAINER),
        ("Installed-Size", str(installed_size_kib)),
        ("Depends", ", ".join(package.depends)),
        ("Provides", ", ".join(package.provides)),
        ("Conflicts", ", ".join(package.conflicts)),
        ("Replaces", ", ".join(package.replaces)),
        ("Section", package.section),
        ("Priority", "optional"),
        ("Homepage", package.homepage),
    ]
    lines = [f"{key}: {value}" for key, value in fields if value]
    lines.append(f"Description: {short}")
    body = long or "Simulated package of the kiln lab's vendor repository."
    for line in body.splitlines():
        lines.append(f" {line}" if line.strip() else " .")
    return "\n".join(lines) + "\n"


def _installed_size(files: list[tuple[str, bytes, int]]) -> int:
    return sum((len(data) + 1023) // 1024 for _, data, _ in files) or 1


def inputs_digest(package: Package, native: str) -> str:
    files = payload(package)
    digest = hashlib.sha256(control_text(package, native, _installed_size(files)).encode())
    for path, data, mode in files:
        digest.update(f"\0{path}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    for name, script in sorted(package.maintainer_scripts.items()):
        digest.update(f"\0{name}\0".encode() + script.encode())
    return digest.hexdigest()


def deb_file_name(package: Package, native: str) -> str:
    version = package.version.split(":", 1)[-1]  # the epoch never appears in file names
    return f"{package.name}_{version}_{architecture(package, native)}.deb"


def pool_path(package: Package, native: str) -> str:
    source = package.source or package.name
    prefix = source[:4] if source.startswith("lib") else source[0]
    return f"pool/main/{prefix}/{source}/{deb_file_name(package, native)}"


def build_deb(package: Package, native: str, output: Path) -> None:
    """Build the package with dpkg-deb into `output` (replaced atomically)."""
    files = payload(package)
    with tempfile.TemporaryDirectory(prefix="kiln-deb-") as tmp:
        root = Path(tmp) / "root"
        debian = root / "DEBIAN"
        debian.mkdir(parents=True)
        for path, data, mode in files:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        (debian / "control").write_text(control_text(package, native, _installed_size(files)))
        for name, script in package.maintainer_scripts.items():
            (debian / name).write_text(script)
            (debian / name).chmod(0o755)
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        result = subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(partial)],
            capture_output=True,
            text=True,
            env=env,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"dpkg-deb failed for {package.name} {package.version}: {result.stderr.strip()}"
            )
        partial.replace(output)
