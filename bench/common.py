"""What every bench script needs: where the shared data is, and the CPU thread setting."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def ready(threads: int) -> bool:
    """Apply --threads (0 = torch's default); False (after saying so) when ../shared/data is absent."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} not present")
        return False
    return True
