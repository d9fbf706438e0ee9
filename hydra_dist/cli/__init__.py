"""hydra_dist.cli"""
