"""The runtime: what a saved compressed model needs to run, at the bottom of the import graph.

``modeling_slimformer.py`` (the block modules, the checkpoint layout and the loader) and
``plan_schema.py`` (the config schema, standard library only) import nothing from the rest
of slimformer: both files are copied next to every saved model and run there through
``trust_remote_code`` where slimformer is not installed. The rest of slimformer imports
the runtime, never the other way round (``tests/test_layering.py``).
"""
