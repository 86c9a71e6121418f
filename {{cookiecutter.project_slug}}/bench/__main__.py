"""``make bench``: run every benchmark in turn."""

from bench import http_core, orders_hot_query

http_core.main()
# Seeds 1.2M orders into scratch databases (a few minutes); see its docstring for options.
orders_hot_query.main([])
