"""Proxyless gRPC pieces for control/tests/grpc_xds.rs: backends, and a grpcio client that dials xds:///NAME.

    python grpc_xds.py serve ID@HOST:PORT [ID@HOST:PORT ...]
        Starts one gRPC server per argument (service test.Echo, method Who: answers its ID), prints "ready", and
        serves until stdin closes.

    python grpc_xds.py client --bootstrap FILE --target xds:///echo
        Reads commands from stdin, one per line, and answers each with one JSON line:
          run N      -> {"counts": {"ID": n, ...}, "errors": {"CODE: details": n, ...}}  (N sequential RPCs; it
                        stops after 10 errors)
          until ID N -> runs RPCs until one answers ID (at most N), then {"seen": true|false, "rpcs": k}
          hash N U   -> N RPCs with the header x-user: u0..u(U-1) in turn -> {"users": {"u0": ["ID", ...], ...}}
        Every RPC has a 5 s deadline and waits for the channel to be ready.

The bootstrap file names l7mp-control as the xDS server (see docs/grpc.md); GRPC_TRACE=xds_client
GRPC_VERBOSITY=debug shows the exchange on stderr.
"""

import argparse
import json
import os
import sys
from concurrent import futures


def serve(specs):
    import grpc

    servers = []
    for spec in specs:
        ident, addr = spec.split("@", 1)

        def who(req, ctx, ident=ident):
            return ident.encode()

        s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        s.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}),)
        )
        if s.add_insecure_port(addr) == 0:
            print(f"cannot bind {addr}", flush=True)
            sys.exit(1)
        s.start()
        servers.append(s)
    print("ready", flush=True)
    sys.stdin.read()
    for s in servers:
        s.stop(0)


def client(bootstrap, target):
    os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap
    import grpc

    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/test.Echo/Who")

    def call(metadata=None):
        try:
            return who(b"", timeout=5, wait_for_ready=True, metadata=metadata).decode(), None
        except grpc.RpcError as e:
            return None, f"{e.code().name}: {e.details()}"

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run":
            counts, errors = {}, {}
            for _ in range(int(words[1])):
                ok, err = call()
                if ok is not None:
                    counts[ok] = counts.get(ok, 0) + 1
                else:
                    errors[err] = errors.get(err, 0) + 1
                    if sum(errors.values()) >= 10:
                        break  # each failure may take the whole deadline: give up early
            print(json.dumps({"counts": counts, "errors": errors}), flush=True)
        elif words[0] == "until":
            want, limit, seen, n = words[1], int(words[2]), False, 0
            while n < limit and not seen:
                n += 1
                ok, _ = call()
                seen = ok == want
            print(json.dumps({"seen": seen, "rpcs": n}), flush=True)
        elif words[0] == "hash":
            users = {}
            for i in range(int(words[1])):
                user = f"u{i % int(words[2])}"
                ok, err = call((("x-user", user),))
                users.setdefault(user, set()).add(ok if ok is not None else err)
            print(json.dumps({"users": {u: sorted(b) for u, b in users.items()}}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {words[0]}"}), flush=True)
    channel.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("specs", nargs="+")
    c = sub.add_parser("client")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--target", required=True)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.specs)
    else:
        client(a.bootstrap, a.target)


if __name__ == "__main__":
    main()
