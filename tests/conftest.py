import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"
# Helpers several test directories share (site_manifests, bmc_ipmi_recorder), imported by
# their module names.
sys.path.insert(0, str(SUPPORT))


@pytest.fixture
def project_root() -> Path:
    return ROOT
