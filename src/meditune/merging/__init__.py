"""Model merging: linear, SLERP, task arithmetic, TIES, DARE, streamed tensor by tensor (see docs/merging.md)."""
