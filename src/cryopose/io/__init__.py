"""cryopose.io"""
