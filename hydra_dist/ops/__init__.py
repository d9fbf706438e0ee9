"""Python face of csrc/ (fused GSB ops) and attention; every op has a pure-PyTorch reference."""
