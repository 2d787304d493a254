"""The lab's simulated "vendor" apt repository, OS mirror and firmware blobs (lab/README.md)."""

from .build import build_repository

__all__ = ["build_repository"]
