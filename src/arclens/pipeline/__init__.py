"""arclens.pipeline"""
