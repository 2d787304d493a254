"""What every role shares: the manifest and inventory models, the node context, the ledger,
secrets, errors, outcomes and retries. Imports no role (an import-linter contract)."""
