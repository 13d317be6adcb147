"""Workflows: compositions of the floors below (demo, reproduce, landscape); nothing below imports them."""
