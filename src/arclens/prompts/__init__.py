"""arclens.prompts"""
