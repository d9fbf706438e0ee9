"""hydra_dist.parallel"""
