"""cryopose.report"""
