// Command caddy is Caddy with its standard modules and edgeguard's
// edge_guard handler.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/edgeguard/edgeguard/caddymodule"
)

func main() {
	caddycmd.Main()
}
