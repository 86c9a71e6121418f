"""Local infrastructure for development and tests: find real servers or start throwaway ones.

Never used in production: there every URL comes from the environment.
"""
