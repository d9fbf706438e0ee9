"""hydra_dist.models"""
