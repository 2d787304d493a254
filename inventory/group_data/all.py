# Where kiln finds credentials (never in the inventory itself).
# Environment variables win: KILN_BMC_USERNAME, KILN_BMC_PASSWORD, KILN_MAAS_API_KEY,
# KILN_UFM_USERNAME, KILN_UFM_PASSWORD (a node's BMC `credentials: bmc-gpu-017` reads
# KILN_BMC_GPU_017_USERNAME …). Otherwise the secrets file below, which must be mode 0600.
kiln_secrets_env_prefix = "KILN_"
kiln_secrets_file = "/etc/kiln/secrets.yaml"

# Manifests (firmware/<sku>.yaml) and the ledger.
kiln_ledger = "state/kiln.db"

# Debian packages the roles install besides the manifests' pins, mirrored with their
# dependencies (nodes install only from the mirror): roles/base's time sync, and the
# Kraken tracker's peer store.
kiln_mirror_os_packages = ["chrony", "redis-server"]

# Kraken, the P2P registry (roles/kraken/settings.py lists every key). Its images are pinned
# here, cluster-wide, and deploy/mirror.py fetches them into the mirror's images/:
# kiln_kraken_version = "<the release your site built>"
# kiln_kraken_images = {
#     "agent": {"ref": "kraken-agent:<version>", "file": "kraken-agent-<version>.tar",
#               "url": "https://<upstream>/kraken-agent-<version>.tar", "sha256": "<64 hex>"},
#     # ... origin, tracker, build-index, proxy
# }
# kiln_kraken_backends = [{"registry": "registry.example.internal:443"}]
# kiln_kraken_runtime = "docker"   # or "containerd"
