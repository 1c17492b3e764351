"""cryopose.reconstruction"""
