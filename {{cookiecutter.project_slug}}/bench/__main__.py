"""``make bench``: run every benchmark in turn."""

from bench import http_core

http_core.main()
