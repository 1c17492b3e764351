"""cryopose.training"""
