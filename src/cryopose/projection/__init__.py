"""cryopose.projection"""
