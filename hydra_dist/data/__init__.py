"""hydra_dist.data"""
