"""Simulated mortal (analog) hardware; see interface.py for what a learner may do with it."""
