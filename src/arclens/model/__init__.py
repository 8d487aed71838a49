"""arclens.model"""
