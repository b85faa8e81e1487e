"""keyswap bench peer: the header swap keyswap does, as a mitmproxy addon.

Not part of keyswap. In every request header value, replaces the placeholder by the real
value, read from the environment variable named by the `swap_real_env` option (never from
the command line). The placeholder is the `swap_placeholder` option.

    mitmdump -s mitmproxy_swap.py --set swap_placeholder=PH --set swap_real_env=VAR

The swap runs in `requestheaders`, which comes before mitmproxy sends the request head
upstream even when the body is streamed (`stream_large_bodies`); `request` would be too late then.
"""

import os

from mitmproxy import ctx, exceptions, http


class Swap:
    def __init__(self) -> None:
        self.placeholder = b""
        self.real = b""

    def load(self, loader) -> None:
        loader.add_option("swap_placeholder", str, "", "Placeholder the agent sends.")
        loader.add_option(
            "swap_real_env", str, "", "Environment variable holding the real value."
        )

    def configure(self, updated) -> None:
        if "swap_placeholder" in updated or "swap_real_env" in updated:
            name = ctx.options.swap_real_env
            real = os.environ.get(name) if name else None
            if not ctx.options.swap_placeholder or real is None:
                raise exceptions.OptionsError(
                    "set swap_placeholder and swap_real_env (naming a set environment variable)"
                )
            self.placeholder = ctx.options.swap_placeholder.encode()
            self.real = real.encode()

    def running(self) -> None:
        # One line at startup (termlog may be silenced), so a launcher that asked for port 0
        # learns the port and that the listener is up.
        for addr in ctx.master.addons.get("proxyserver").listen_addrs():
            print(f"mitmproxy_swap: listening at {addr[0]}:{addr[1]}", flush=True)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        placeholder = self.placeholder
        if any(placeholder in value for _, value in headers.fields):
            real = self.real
            headers.fields = tuple(
                (name, value.replace(placeholder, real)) for name, value in headers.fields
            )


addons = [Swap()]
