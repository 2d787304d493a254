"""kiln's roles: one sub-package per role, shared machinery (manifest, inventory) beside them."""

from pathlib import Path

# The checkout kiln runs from: firmware/, inventory/ and templates/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = PROJECT_ROOT / "firmware"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
