"""pipeline/explanation"""
