vcl 4.1;

# The edge: a CDN stand-in in front of the gateway (client -> edge -> gateway -> API).
#
# For now a pass-through: nothing is cached, every request goes to the gateway. The edge sets
# the forwarding headers the rest of the chain trusts, and retries safe requests that failed
# before the app could answer them. Caching by Cache-Control / s-maxage, surrogate keys and
# purges come with the CDN component.
#
# The backend (where the gateway is) differs per environment, so it lives in backend.vcl, found
# through vcl_path: compose mounts this directory with the backend.vcl next to this file, and
# `make dev` puts a rendered one first in vcl_path.
include "backend.vcl";

sub vcl_recv {
    # The edge's own health, answered here: a health check of the edge must not depend on the
    # API behind it.
    if (req.url == "/.edge/health") {
        return (synth(200, "OK"));
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
    return (pass);
}

sub vcl_pipe {
    if (req.http.Upgrade) {
        set bereq.http.Upgrade = req.http.Upgrade;
        set bereq.http.Connection = req.http.Connection;
    }
}

sub vcl_backend_response {
    # A 5xx the app did not make (the gateway's own: no instance reachable, or one died while
    # answering) is retried for GET/HEAD, which are safe to repeat. The app's answers, its
    # problem+json errors included, are final.
    if (beresp.status >= 500 && beresp.http.Content-Type !~ "^application/problem\+json"
            && bereq.method ~ "^(GET|HEAD)$" && bereq.retries < 2) {
        return (retry);
    }
    # Whole responses: a body cut short (an instance killed between writing the headers and the
    # body) is a failed fetch here, retried below, never a truncated response to the client.
    # Event streams are the exception: they are sent as they come.
    if (beresp.http.Content-Type ~ "^text/event-stream") {
        set beresp.do_stream = true;
    } else {
        set beresp.do_stream = false;
    }
}

sub vcl_backend_error {
    # No response at all from the gateway: retry what is safe to repeat.
    if (bereq.method ~ "^(GET|HEAD)$" && bereq.retries < 2) {
        return (retry);
    }
}
