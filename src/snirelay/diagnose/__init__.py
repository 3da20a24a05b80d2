"""snirelay.diagnose"""
