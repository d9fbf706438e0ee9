"""Performance accounting: FLOPs per micro-batch, MFU against a peak, memory planning."""
