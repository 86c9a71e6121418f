# compose: the gateway is the `traefik` service. `make dev` renders its own copy of this file
# (devstack/topology.py) pointing at 127.0.0.1:$GATEWAY_PORT.
backend gateway {
    .host = "traefik";
    .port = "8080";
    .connect_timeout = 2s;
    .first_byte_timeout = 60s;
    .between_bytes_timeout = 60s;
}
