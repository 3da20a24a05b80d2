"""snirelay.observe"""
