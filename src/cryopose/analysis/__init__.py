"""cryopose.analysis"""
