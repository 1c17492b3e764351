"""cryopose.simulate"""
