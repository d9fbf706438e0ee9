"""hydra_dist.train"""
