"""MoDeGPT (in progress): the closed-form module decompositions live in ``solve.py``; the method is not registered yet."""
