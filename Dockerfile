# Caddy with the edge_guard module, as a small non-root image.
#
#   docker build -t edgeguard .
#   docker run -p 8080:8080 -v $PWD/Caddyfile:/etc/caddy/Caddyfile edgeguard
#
# The build step is scripts/build-caddy, the same script CI runs.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN ./scripts/build-caddy /out/caddy \
	&& mkdir -p /out/config /out/data

# distroless: no shell, no package manager, CA certificates for https key
# sets, and the nonroot user (65532)
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/caddy /usr/bin/caddy
COPY --from=build --chown=65532:65532 /out/config /config
COPY --from=build --chown=65532:65532 /out/data /data
COPY deploy/Caddyfile /etc/caddy/Caddyfile
ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/bin/caddy"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
