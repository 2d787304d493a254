"""Mirror download throughput: nginx (kiln's mirror) against `python3 -m http.server`.

    python bench/mirror_throughput.py [--size-mib 1024] [--rounds 3] [--client gpu-001]

Needs a running lab whose service node serves the mirror (`pyinfra -y inventory/lab.py
deploy/mirror.py`). On the service node it writes one file of random bytes into the mirror's
files/ tree and starts Python's http.server on the same directory (port 8099, for the run
only). From a GPU node, curl downloads the file from each server in turn, `--rounds` times,
to /dev/null; the best round of each is compared. Both are plain HTTP on the same network
path, the same file in the same page cache: the difference is the server. Prints MiB/s for
each and their ratio; asserts nothing (time limits live here, never in tests).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln.lab.state import LabState, load_state  # noqa: E402

MIRROR_ROOT = "/srv/kiln-mirror"
BENCH_FILE = "files/bench/throughput.bin"
BASELINE_PORT = 8099


def ssh(state: LabState, node: str, command: str, check: bool = True) -> str:
    address = state.node(node).address
    result = subprocess.run(
        ["ssh", "-i", state.ssh_key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{address}",
         command],
        capture_output=True, text=True, timeout=900,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"ssh {node} {command!r} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def download_rate(state: LabState, client: str, url: str, size: int) -> float:
    """MiB/s of one curl download to /dev/null, from curl's own timer."""
    timing = "-w '%{size_download} %{time_total}'"
    out = ssh(state, client, f"curl -fsS -o /dev/null {timing} {url}")
    downloaded, seconds = out.split()
    if int(downloaded) != size:
        raise SystemExit(f"{url}: downloaded {downloaded} bytes, expected {size}")
    return size / float(seconds) / (1 << 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", help="GPU node that downloads (default: the first)")
    args = parser.parse_args()

    state = load_state()
    service = next(n for n in state.nodes if n.role == "service")
    client = args.client or next(n.name for n in state.nodes if n.role == "gpu")
    size = args.size_mib << 20
    path = f"{MIRROR_ROOT}/{BENCH_FILE}"
    ssh(state, service.name, f"mkdir -p $(dirname {path}) && head -c {size} /dev/urandom "
        f"> {path}.tmp && mv {path}.tmp {path} && cat {path} >/dev/null")
    baseline_dir = f"{MIRROR_ROOT}/files/bench"
    ssh(state, service.name,
        f"nohup python3 -m http.server {BASELINE_PORT} --bind {service.address} "
        f"--directory {baseline_dir} >/tmp/bench-http-server.log 2>&1 & echo $! > /tmp/bench.pid;"
        f" for i in $(seq 50); do curl -fsS -o /dev/null http://{service.address}:"
        f"{BASELINE_PORT}/ && break; sleep 0.1; done")
    try:
        servers = {
            "nginx (kiln mirror)": f"http://{service.address}/{BENCH_FILE}",
            "python3 -m http.server": f"http://{service.address}:{BASELINE_PORT}/throughput.bin",
        }
        best: dict[str, float] = {}
        for round_number in range(1, args.rounds + 1):
            for name, url in servers.items():
                rate = download_rate(state, client, url, size)
                best[name] = max(best.get(name, 0.0), rate)
                print(f"round {round_number}: {name:<24} {rate:9.1f} MiB/s")
    finally:
        ssh(state, service.name, "kill $(cat /tmp/bench.pid) 2>/dev/null; rm -f /tmp/bench.pid "
            f"{path}; rmdir {baseline_dir} 2>/dev/null; true", check=False)
    nginx, baseline = best["nginx (kiln mirror)"], best["python3 -m http.server"]
    print(f"\n{args.size_mib} MiB from {service.name} to {client}, best of {args.rounds}:")
    print(f"  nginx (kiln mirror)      {nginx:9.1f} MiB/s")
    print(f"  python3 -m http.server   {baseline:9.1f} MiB/s")
    print(f"  ratio nginx / http.server: {nginx / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
