"""kiln: declarative bring-up of bare-metal GPU clusters with pyinfra (see README.md)."""
