"""Host data the roles need on the lab that the lab inventory does not carry: the vendor
repository as the nodes' apt mirror, the lab gateway as NTP server (the lab's chronyd), a
clock chrony must not set (the nodes share the host's). Shared by the lab tests that run
bring-up's stages."""

from __future__ import annotations

import json
from typing import Any


def lab_stage_data(state: Any) -> dict[str, Any]:
    repo = state.endpoints["vendor_repo"]
    return {
        "kiln_apt_mirror": {
            "sources": [{"uri": f"{repo}apt", "suite": "kilnlab", "components": ["main"]},
                        {"uri": f"{repo}os", "suite": "bookworm", "components": ["main"]}],
            "key": f"{repo}keys/lab-archive.asc",
        },
        "kiln_ntp_servers": [state.network["gateway"]],
        "kiln_time_sync_sets_clock": False,
    }


def data_args(data: dict[str, Any], option: str = "--data") -> list[str]:
    """`--data key=json` arguments for pyinfra (or `option` for another tool)."""
    return [arg for key, value in data.items() for arg in (option, f"{key}={json.dumps(value)}")]


def lab_apt_data(state: Any) -> list[str]:
    """pyinfra's --data arguments for `lab_stage_data`."""
    return data_args(lab_stage_data(state))
