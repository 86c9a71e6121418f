"""Reusable patterns, one module each. None of them imports from a domain package, so each
can be lifted into another FastAPI app with the dependencies its docstring names."""
