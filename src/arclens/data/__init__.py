"""arclens.data"""
