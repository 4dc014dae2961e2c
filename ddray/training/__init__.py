"""The plain-PyTorch training loop and the per-subdomain training built on it (no Ray)."""
