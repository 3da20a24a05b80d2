"""snirelay.net"""
