"""Entropy coding: an integer arithmetic coder driven by any next-symbol model (`arithmetic.py`)."""
