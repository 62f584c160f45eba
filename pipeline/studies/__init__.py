"""pipeline/studies"""
