"""cryopose.search"""
