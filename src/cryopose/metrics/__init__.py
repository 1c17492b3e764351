"""cryopose.metrics"""
