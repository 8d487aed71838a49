"""arclens.distributed"""
