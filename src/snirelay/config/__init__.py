"""snirelay.config"""
