"""``make bench``: run every benchmark in turn."""

from . import http_core, orders_hot_query, read_path, storage

http_core.main()
# Starts the local stack twice (cache on, cache off): about a minute.
read_path.main()
# Seeds 1.2M orders into scratch databases (a few minutes); see its docstring for options.
orders_hot_query.main([])
# Starts a throwaway SeaweedFS: direct-to-S3 vs streamed through the API (seconds).
storage.main()
