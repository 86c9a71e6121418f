"""``make bench``: run every benchmark in turn, on the configured or throwaway servers."""

from . import http_core, orders_hot_query, read_path
from .services import services

with services():
    http_core.main()
    # Starts the local stack twice (cache on, cache off): about a minute.
    read_path.main()
    # Seeds 1.2M orders into scratch databases (a few minutes); see its docstring for options.
    orders_hot_query.main([])
