"""hydra_dist.export"""
