"""BDLM research workbench: an LLM and a domain recommender that teach each other.

data -> domain -> llm -> joint -> baselines -> report, experiments (batches), explorer; methods.py
is the one table of methods, store.py the run store. Notebooks call this library.
"""
from .params import load_params

__version__ = "0.1.0"
__all__ = ["load_params"]
