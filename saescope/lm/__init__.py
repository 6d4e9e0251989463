"""Language-model side: loading models, hookpoints, capture/splice hooks, streaming, in-model evaluation.

Importing this package does not import transformers; ``load_model`` does, when called.
"""
