"""pipeline/data"""
