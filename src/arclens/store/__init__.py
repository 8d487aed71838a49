"""arclens.store"""
