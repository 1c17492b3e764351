"""cryopose.models"""
