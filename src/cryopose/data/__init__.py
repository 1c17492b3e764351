"""cryopose.data"""
