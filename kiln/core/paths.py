"""Where kiln's shipped data lives: package data, so an installed kiln finds it anywhere.

A site's own manifests (group data `kiln_firmware_dir`) take the place of FIRMWARE_DIR.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = PACKAGE_DIR / "firmware"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
