vcl 4.1;

# The edge: a CDN stand-in in front of the gateway (client -> edge -> gateway -> API).
#
# It retries safe requests that failed before the app could answer them (docs/load-balancer.md),
# and caches what the API declares shareable and nothing else (docs/cdn.md):
# - a response is stored only when its Cache-Control says `public` or `s-maxage` and says none
#   of `private`, `no-store`, `no-cache`, and it sets no cookie. The TTL is `s-maxage` (Varnish
#   reads it before `max-age`), the grace is `stale-while-revalidate` (also read natively):
#   past the TTL, one background fetch refreshes the object while everyone gets the stale one;
# - a request with credentials (Authorization, Cookie) is never looked up in the cache nor
#   stored into it: its answer is the caller's own;
# - concurrent misses for one object wait for one backend fetch (Varnish's waiting list): the
#   origin sees one request per object per TTL, however many clients ask;
# - stale-if-error (RFC 5861): an object whose Cache-Control says `stale-if-error=N` is kept N
#   seconds past its TTL. Within `stale-while-revalidate` it is served as above; past that, a
#   request refreshes it synchronously and, when the origin fails (a 5xx, or no answer after the
#   retries), the request is restarted to serve the stale copy instead (`X-Cache: STALE`). Past
#   N, the failure is the answer: a 503 problem+json;
# - objects are tagged with the keys of the response's `xkey` header; `PURGE` with an
#   `xkey-purge: k1 k2` header drops every object tagged with any of them, and is accepted only
#   from the `purgers` network below;
# - a fetch that was already on its way when a purge came is fetched again, not stored: the
#   write may have committed while the origin was answering, and a purge drops only what is
#   in the cache by then (vcl_backend_response).
#
# The backend (where the gateway is) differs per environment, so it lives in backend.vcl, found
# through vcl_path: compose mounts this directory with the backend.vcl next to this file, and
# `make dev` puts a rendered one first in vcl_path. xkey ships in varnish-modules (Debian's
# `varnish-modules` package; the official varnish image includes it).
import std;
import var;
import xkey;

include "backend.vcl";

# Who may purge: the API instances, never the internet. Locally they connect from loopback;
# compose's backend network is 172.30.0.0/24. In Kubernetes, put the pod network's range here.
acl purgers {
    "127.0.0.1";
    "::1";
    "172.30.0.0"/24;
}

sub vcl_recv {
    # Set only by this VCL, on the restart after an origin failure (vcl_synth): never believed
    # from a client.
    if (req.restarts == 0) {
        unset req.http.X-Edge-Refresh;
        unset req.http.X-Edge-Stale-If-Error;
        unset req.http.X-Edge-Stale;
    }
    # vcl_hit asked for a synchronous refresh: no grace on this lookup, so it is a miss. Any
    # other lookup (req.grace survives a restart) takes the object's own grace.
    if (req.http.X-Edge-Refresh) {
        set req.grace = 0s;
    } else {
        set req.grace = 3650d;
    }
    # The edge's own health, answered here: a health check of the edge must not depend on the
    # API behind it.
    if (req.url == "/.edge/health") {
        return (synth(200, "OK"));
    }

    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Purging is not allowed from this address"));
        }
        # When the latest purge came, set before purging: see vcl_backend_response. One time for
        # every key keeps this a single value, at the price of a refetch for any fetch that a
        # purge of anything overtook (writes per second x fetch time: a few in a hundred).
        var.global_set("purged_at", "" + std.real(time=now));
        if (req.http.xkey-purge) {
            set req.http.X-Purged = xkey.purge(req.http.xkey-purge);
        } elsif (req.http.xkey-softpurge) {
            set req.http.X-Purged = xkey.softpurge(req.http.xkey-softpurge);
        } else {
            return (synth(400, "PURGE needs an xkey-purge or xkey-softpurge header"));
        }
        return (synth(200, "Purged"));
    }

    # The edge is the first hop we trust, so it states who the client is instead of appending
    # to whatever the client claimed. The gateway trusts only the edge to say this.
    set req.http.X-Forwarded-For = client.ip;
    # This edge listens on plain HTTP. Put a TLS terminator in front and it must set this
    # header itself (and be the only one allowed to).
    set req.http.X-Forwarded-Proto = "http";

    # Upgrades (WebSocket) are piped through untouched.
    if (req.http.Upgrade ~ "(?i)websocket") {
        return (pipe);
    }
    # A body over the gateway's limit (1 MiB, maxRequestBodyBytes in deploy/traefik): refused
    # here, unread, with the same 413 problem+json the gateway gives. Passed on, the gateway
    # refused it after the first MiB and closed the connection, which Varnish turned into its
    # own 503 HTML page ("Backend fetch failed"). Chunked bodies have no length to check: they
    # are piped, so the gateway's answer reaches the client byte for byte.
    if (std.integer(req.http.Content-Length, 0) > 1048576) {
        # No "100 Continue" first (Varnish sends it right after vcl_recv by default): told to
        # go on, curl starts the body, our close resets the connection and the 413 is lost.
        std.late_100_continue(true);
        return (synth(413, "Request Entity Too Large"));
    }
    if (req.http.Transfer-Encoding && !req.http.Content-Length) {
        return (pipe);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    # Live event streams: one per client, never stored, never coalesced on a waiting list.
    if (req.url ~ "^/events/") {
        return (pass);
    }
    # Credentials mean a user-specific answer: it must never come from, or go into, the
    # shared cache, whatever headers the origin sends.
    if (req.http.Authorization || req.http.Cookie) {
        return (pass);
    }
    return (hash);
}

sub vcl_hit {
    # Fresh, or within the object's stale-while-revalidate (X-Edge-Swr, recorded at fetch):
    # deliver; a stale one starts one background refresh. Objects from before this rule have no
    # X-Edge-Swr and keep Varnish's own grace.
    if (!obj.http.X-Edge-Swr || obj.ttl + std.duration(obj.http.X-Edge-Swr + "s", 0s) >= 0s) {
        return (deliver);
    }
    # Past that, the grace left is the stale-if-error allowance, for when the origin fails: on
    # the restart after a failed refresh, serve the stale copy.
    if (req.http.X-Edge-Stale-If-Error) {
        set req.http.X-Edge-Stale = "1";
        return (deliver);
    }
    # Otherwise refresh it now, as if it had expired (vcl_hit cannot return miss in 7.x: the
    # restarted lookup ignores grace instead).
    set req.http.X-Edge-Refresh = "1";
    return (restart);
}

sub vcl_miss {
    # The restart after an origin failure found no stale copy (none, or past its
    # stale-if-error): the failure is the answer, without asking the origin again.
    if (req.http.X-Edge-Stale-If-Error) {
        return (synth(503, "Service Unavailable"));
    }
}

sub vcl_synth {
    if (resp.status == 503 && !req.http.X-Edge-Stale-If-Error && req.method ~ "^(GET|HEAD)$") {
        # A refresh of a cacheable object failed (vcl_backend_response / vcl_backend_error
        # abandoned it): look it up again, now accepting a copy within stale-if-error.
        unset req.http.X-Edge-Refresh;
        set req.http.X-Edge-Stale-If-Error = "1";
        return (restart);
    }
    if (resp.status == 503) {
        set resp.http.Content-Type = "application/problem+json";
        set resp.http.Cache-Control = "private, no-store";
        set resp.http.Retry-After = "5";
        set resp.body = {"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The service is unavailable and the edge holds no copy of this resource it may still serve. Try again shortly." }"};
        return (deliver);
    }
    if (resp.status == 413) {
        # The body was never read: close rather than read it to keep the connection.
        set resp.http.Connection = "close";
        set resp.http.Content-Type = "application/problem+json";
        set resp.http.Cache-Control = "private, no-store";
        set resp.body = {"{"type":"about:blank","title":"Request Entity Too Large","status":413,"detail":"The request body is larger than the gateway accepts (1 MiB). JSON bodies are small; files go to object storage with a presigned upload (POST /uploads)." }"};
        return (deliver);
    }
    if (req.method == "PURGE" && req.http.X-Purged) {
        # How many objects went, for the purge client's log.
        set resp.http.X-Purged = req.http.X-Purged;
    }
}

sub vcl_pipe {
    if (req.http.Upgrade) {
        set bereq.http.Upgrade = req.http.Upgrade;
        set bereq.http.Connection = req.http.Connection;
    }
}

sub vcl_backend_fetch {
    # When this fetch (or its retry) started: `now` is the fetch's own start here, at ms.
    set bereq.http.X-Edge-Fetch-Start = "" + std.real(time=now);
}

sub vcl_backend_response {
    # A 5xx the app did not make (the gateway's own: no instance reachable, or one died while
    # answering) is retried for GET/HEAD, which are safe to repeat. The app's answers, its
    # problem+json errors included, are final.
    if (beresp.status >= 500 && beresp.http.Content-Type !~ "^application/problem\+json"
            && bereq.method ~ "^(GET|HEAD)$" && bereq.retries < 2) {
        return (retry);
    }
    # A cacheable object the origin failed to refresh: never stored over the stale copy. A
    # background refresh is dropped (the stale copy stays); a foreground one goes to vcl_synth,
    # which restarts the request to look for a copy within stale-if-error.
    if (beresp.status >= 500 && !bereq.uncacheable) {
        return (abandon);
    }
    # Whole responses: a body cut short (an instance killed between writing the headers and the
    # body) is a failed fetch here, retried below, never a truncated response to the client.
    # Event streams are the exception: they are sent as they come.
    if (beresp.http.Content-Type ~ "^text/event-stream") {
        set beresp.do_stream = true;
    } else {
        set beresp.do_stream = false;
    }

    if (bereq.uncacheable) {
        # A pass (credentials, writes): nothing to decide, nothing is kept.
        return (deliver);
    }
    if (beresp.http.Cache-Control !~ "(?i)(public|s-maxage)"
        || beresp.http.Cache-Control ~ "(?i)(private|no-store|no-cache)"
        || beresp.http.Set-Cookie
        || beresp.http.Vary == "*") {
        # Not declared shareable: never stored. Remembered as "don't wait for this one" for a
        # minute, so requests for it go to the origin in parallel instead of queueing.
        set beresp.uncacheable = true;
        set beresp.ttl = 60s;
        return (deliver);
    }
    # A purge came while this fetch was out (started at or before it: the same ms counts), and
    # this object has keys a purge can name. The origin may have read the row before the write
    # committed; stored, that answer would outlive the purge and be served after the write's 2xx
    # to everyone, and to the requests waiting on this fetch. Fetched again, it starts after the
    # purge, so after the commit. What is not stored (above) or has no keys (nothing can purge
    # it) is left alone: refetching it would only double origin requests. Overtaken again and
    # again (a write storm), it is given to the waiting requests' own fetches instead of stored
    # (uncacheable with no TTL).
    if (beresp.http.xkey
            && std.real(bereq.http.X-Edge-Fetch-Start, 0) <= std.real(var.global_get("purged_at"), 0)) {
        if (bereq.method ~ "^(GET|HEAD)$" && bereq.retries < 3) {
            return (retry);
        }
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
        return (deliver);
    }
    # After TTL + grace, keep the object a while longer to revalidate it with the origin
    # (If-None-Match with its ETag: a 304 costs the origin no body).
    set beresp.keep = 10m;
    # stale-if-error=N: kept N seconds past the TTL (the grace), served past its
    # stale-while-revalidate only when the origin fails (vcl_hit). X-Edge-Swr remembers the
    # stale-while-revalidate Varnish read as the grace; vcl_deliver drops it.
    set beresp.http.X-Edge-Swr = "" + beresp.grace;
    if (beresp.http.Cache-Control ~ "(?i)stale-if-error=[0-9]+") {
        set beresp.grace = std.duration(
            regsub(beresp.http.Cache-Control, "(?i)^.*stale-if-error=([0-9]+).*$", "\1s"),
            beresp.grace);
    }
    if (beresp.http.Content-Type ~ "(?i)json") {
        # Compressed once here, served compressed to every client that accepts it.
        set beresp.do_gzip = true;
    }
    return (deliver);
}

sub vcl_backend_error {
    # No response at all from the gateway: retry what is safe to repeat.
    if (bereq.method ~ "^(GET|HEAD)$" && bereq.retries < 2) {
        return (retry);
    }
    # Then, for a cacheable object, the stale-if-error path (see vcl_backend_response).
    if (!bereq.uncacheable) {
        return (abandon);
    }
    set beresp.http.Content-Type = "application/problem+json";
    set beresp.http.Cache-Control = "private, no-store";
    set beresp.http.Retry-After = "5";
    set beresp.body = {"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The edge got no answer from the service. Try again shortly." }"};
    return (deliver);
}

sub vcl_deliver {
    # Purge keys are for the edge; clients need not see them.
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    unset resp.http.X-Edge-Swr;
    # Where the answer came from, for people and for the proofs.
    if (obj.uncacheable) {
        set resp.http.X-Cache = "PASS";
    } elsif (req.http.X-Edge-Stale) {
        # Served past stale-while-revalidate because the origin failed (stale-if-error).
        set resp.http.X-Cache = "STALE";
    } elsif (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
