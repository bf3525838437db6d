"""Scripted xDS protocol checks against l7mp-control with an independent implementation (PyPI `xds-protos` stubs):
state-of-the-world and delta ADS for the Envoy resources of gRPC services, and CSDS.

    python xds_protocol.py --server 127.0.0.1:PORT --l7mpctl PATH

Applies its own objects with l7mpctl (two Targets, two gRPC VirtualServices `a` and `b`), then runs each check on
its own stream(s) and node id. Prints `PASS <check>` per check and exits 0, or prints `FAIL <check>: <why>` and
exits 1. Every wait for a response is bounded (RESPONSE_TIMEOUT); "no response" is checked over QUIET.
"""

import argparse
import queue
import subprocess
import sys
import threading
import time
import traceback

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as csds_status
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.rpc import status_pb2

PREFIX = "type.googleapis.com/"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
RESPONSE_TIMEOUT = 10.0
QUIET = 0.7

MESH = """
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: t1}
spec:
  cluster: {spec: {HTTP: {port: 50051}}, endpoints: [{spec: {address: %(t1)s}}]}
---
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: t2}
spec:
  cluster: {spec: {HTTP: {port: 50051}}, endpoints: [{spec: {address: 127.0.0.3}}]}
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: svc-a}
spec:
  grpc: {name: a}
  listener: {rules: [{action: {route: {destination: %(a_to)s}}}]}
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: svc-b}
spec:
  grpc: {name: b}
  listener: {rules: [{action: {route: {destination: t2}}}]}
"""


class Fail(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Fail(why)


class Stream:
    """One ADS stream (SotW or delta): requests go in through a queue, responses come out of another."""

    def __init__(self, channel, node_id, delta=False):
        self.delta = delta
        self.node = base_pb2.Node(id=node_id, user_agent_name="xds-protocol-check")
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.first = True
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.responses.put(e)

    def send(self, type_url, names=(), nonce="", version="", error=None, unsubscribe=(), initial=None):
        kw = {}
        if self.first:
            kw["node"] = self.node
            self.first = False
        if error is not None:
            kw["error_detail"] = status_pb2.Status(code=3, message=error)
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=list(names),
                resource_names_unsubscribe=list(unsubscribe),
                initial_resource_versions=initial or {},
                response_nonce=nonce,
                **kw,
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version, **kw
            )
        self.requests.put(req)

    def recv(self, what):
        try:
            r = self.responses.get(timeout=RESPONSE_TIMEOUT)
        except queue.Empty:
            raise Fail(f"no response ({what}) within {RESPONSE_TIMEOUT}s")
        if isinstance(r, Exception):
            raise Fail(f"stream failed ({what}): {r}")
        return r

    def none(self, what):
        try:
            r = self.responses.get(timeout=QUIET)
        except queue.Empty:
            return
        raise Fail(f"unexpected response ({what}): {r}")

    def ack(self, r, names=()):
        if self.delta:
            self.send(r.type_url, nonce=r.nonce)
        else:
            self.send(r.type_url, names=names, nonce=r.nonce, version=r.version_info)

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def names_of(resp):
    """The resource names of a SotW response (unpacking each type)."""
    out = []
    for any_ in resp.resources:
        for cls, field in (
            (listener_pb2.Listener, "name"),
            (route_pb2.RouteConfiguration, "name"),
            (cluster_pb2.Cluster, "name"),
            (endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
        ):
            if any_.type_url == PREFIX + cls.DESCRIPTOR.full_name:
                m = cls()
                any_.Unpack(m)
                out.append(getattr(m, field))
    return sorted(out)


class Checks:
    def __init__(self, server, l7mpctl):
        self.server = server
        self.l7mpctl = l7mpctl
        self.channel = grpc.insecure_channel(server)

    def apply(self, t1="127.0.0.2", a_to="t1"):
        out = subprocess.run(
            [self.l7mpctl, "--server", "http://" + self.server, "apply", "-f", "-"],
            input=MESH % {"t1": t1, "a_to": a_to},
            capture_output=True,
            text=True,
            timeout=30,
        )
        check(out.returncode == 0 and "Rejected" not in out.stdout, f"l7mpctl apply: {out.stdout}{out.stderr}")

    def csds(self, node_id):
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(self.channel)
        resp = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(node=base_pb2.Node(id=node_id)), timeout=10)
        check(len(resp.config) == 1, f"CSDS knows {node_id}: {resp}")
        return {(g.type_url, g.name): g for g in resp.config[0].generic_xds_configs}

    # --- state of the world -------------------------------------------------------------------------------------

    def sotw_subscribe_unsubscribe(self):
        s = Stream(self.channel, "proto-sotw-sub")
        s.send(LDS, ["a"])
        r = s.recv("LDS [a]")
        check(names_of(r) == ["a"], f"[a] -> {names_of(r)}")
        lis = listener_pb2.Listener()
        r.resources[0].Unpack(lis)
        hcm = hcm_pb2.HttpConnectionManager()
        lis.api_listener.api_listener.Unpack(hcm)
        check(hcm.rds.route_config_name == "default/svc-a", f"RDS name {hcm.rds.route_config_name}")
        check(hcm.rds.config_source.HasField("ads"), "RDS over ADS")
        check(hcm.http_filters[-1].typed_config.type_url.endswith("router.v3.Router"), "router filter last")
        s.ack(r, ["a"])
        s.none("ACK of [a]")
        s.send(LDS, ["a", "b"], nonce=r.nonce, version=r.version_info)
        r2 = s.recv("LDS [a, b]")
        check(names_of(r2) == ["a", "b"], f"[a, b] -> {names_of(r2)}")
        check(r2.version_info != r.version_info, "a new set has a new version_info")
        s.ack(r2, ["a", "b"])
        s.send(LDS, ["b"], nonce=r2.nonce, version=r2.version_info)
        r3 = s.recv("LDS [b]")
        check(names_of(r3) == ["b"], f"[b] -> {names_of(r3)}")
        s.ack(r3, ["b"])
        s.none("ACK of [b]")
        s.close()

    def sotw_ack_nack(self):
        node = "proto-sotw-nack"
        s = Stream(self.channel, node)
        s.send(RDS, ["default/svc-a"])
        r = s.recv("RDS")
        check(names_of(r) == ["default/svc-a"], f"{names_of(r)}")
        s.ack(r, ["default/svc-a"])
        # The configuration changes: a new version comes; the client NACKs it.
        self.apply(a_to="t2")
        r2 = s.recv("RDS after the change")
        check(r2.version_info != r.version_info, "new version")
        s.send(RDS, ["default/svc-a"], nonce=r2.nonce, version=r.version_info, error="client says no")
        s.none("after the NACK: the rejected version is not resent")
        st = self.csds(node)[(RDS, "default/svc-a")]
        check(st.client_status == csds_status.NACKED, f"CSDS after the NACK: {st}")
        check(st.error_state.details == "client says no", f"error_state {st.error_state}")
        check(st.version_info == r.version_info, "CSDS version_info is the last ACKed one")
        # Changed again: the next version goes out, and is ACKed.
        self.apply(a_to="t1")
        r3 = s.recv("RDS after the second change")
        s.ack(r3, ["default/svc-a"])
        deadline = time.time() + 5
        while True:
            st = self.csds(node)[(RDS, "default/svc-a")]
            if st.client_status == csds_status.ACKED or time.time() > deadline:
                break
            time.sleep(0.1)
        check(st.client_status == csds_status.ACKED, f"ACKED after the ACK: {st}")
        s.close()

    def sotw_stale_nonce(self):
        s = Stream(self.channel, "proto-sotw-stale")
        s.send(LDS, ["a"])
        r = s.recv("LDS [a]")
        s.ack(r, ["a"])
        s.send(LDS, ["a", "b"], nonce="not-a-nonce-of-this-stream", version=r.version_info)
        s.none("a request with a stale nonce is ignored")
        s.send(LDS, ["a", "b"], nonce=r.nonce, version=r.version_info)
        r2 = s.recv("the same request with the latest nonce")
        check(names_of(r2) == ["a", "b"], f"{names_of(r2)}")
        s.close()

    def sotw_reconnect(self):
        s = Stream(self.channel, "proto-sotw-reconnect")
        s.send(CDS, ["default/t1", "default/t2"])
        r = s.recv("CDS")
        s.ack(r, ["default/t1", "default/t2"])
        s.close()
        s2 = Stream(self.channel, "proto-sotw-reconnect")
        s2.send(CDS, ["default/t1", "default/t2"], version=r.version_info)
        r2 = s2.recv("CDS after reconnecting")
        check(names_of(r2) == names_of(r), "the whole set again (SotW has no initial versions)")
        check(r2.version_info == r.version_info, "the same set has the same version_info")
        s2.close()

    # --- delta --------------------------------------------------------------------------------------------------

    def delta_subscribe_unsubscribe(self):
        s = Stream(self.channel, "proto-delta-sub", delta=True)
        s.send(CDS, ["default/t1"])
        r = s.recv("CDS +t1")
        check([x.name for x in r.resources] == ["default/t1"], f"{r.resources}")
        check(r.resources[0].version, "a resource version")
        s.ack(r)
        s.send(CDS, ["default/t2"], nonce=r.nonce)
        r2 = s.recv("CDS +t2")
        check([x.name for x in r2.resources] == ["default/t2"], "only the new name is sent")
        s.ack(r2)
        s.send(CDS, unsubscribe=["default/t1"], nonce=r2.nonce)
        s.none("unsubscribing sends nothing")
        s.send(CDS, ["default/nope"], nonce=r2.nonce)
        r3 = s.recv("CDS +nope")
        check(list(r3.removed_resources) == ["default/nope"] and not r3.resources, f"absent name: {r3}")
        s.ack(r3)
        # A change of t1 (unsubscribed) is not sent; its endpoints' change reaches an EDS subscriber only.
        s.send(EDS, ["default/t1"])
        e = s.recv("EDS t1")
        s.ack(e)
        self.apply(t1="127.0.0.4")
        e2 = s.recv("EDS t1 after its endpoint moved")
        check([x.name for x in e2.resources] == ["default/t1"], f"{e2.resources}")
        cla = endpoint_pb2.ClusterLoadAssignment()
        e2.resources[0].resource.Unpack(cla)
        addr = cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
        check(addr == "127.0.0.4", f"moved endpoint {addr}")
        s.ack(e2)
        s.none("nothing else changed for this client")
        self.apply()
        s.ack(s.recv("EDS t1 back"))
        s.close()

    def delta_wildcard(self):
        s = Stream(self.channel, "proto-delta-wildcard", delta=True)
        s.send(LDS)
        r = s.recv("LDS wildcard")
        check(sorted(x.name for x in r.resources) == ["a", "b"], f"{[x.name for x in r.resources]}")
        s.ack(r)
        s.close()

    def delta_ack_nack_stale(self):
        node = "proto-delta-nack"
        s = Stream(self.channel, node, delta=True)
        s.send(RDS, ["default/svc-a"])
        r = s.recv("RDS")
        s.ack(r)
        self.apply(a_to="t2")
        r2 = s.recv("RDS changed")
        s.send(RDS, nonce=r2.nonce, error="delta client says no")
        s.none("the NACKed version is not resent")
        st = self.csds(node)[(RDS, "default/svc-a")]
        check(st.client_status == csds_status.NACKED, f"NACKED: {st}")
        # A stale nonce still subscribes (delta requests are incremental) but acknowledges nothing.
        s.send(RDS, ["default/svc-b"], nonce="stale-nonce")
        r3 = s.recv("RDS +svc-b with a stale nonce")
        check([x.name for x in r3.resources] == ["default/svc-b"], f"{r3.resources}")
        s.ack(r3)
        self.apply()
        s.ack(s.recv("RDS back"))
        s.close()

    def delta_reconnect_initial_versions(self):
        node = "proto-delta-reconnect"
        s = Stream(self.channel, node, delta=True)
        s.send(CDS, ["default/t1", "default/t2"])
        r = s.recv("CDS")
        versions = {x.name: x.version for x in r.resources}
        check(sorted(versions) == ["default/t1", "default/t2"], f"{versions}")
        s.ack(r)
        s.close()
        time.sleep(0.2)
        # Reconnect holding t1 at its version, t2 at an old one, and a cluster that no longer exists.
        s2 = Stream(self.channel, node, delta=True)
        initial = {"default/t1": versions["default/t1"], "default/t2": "old", "default/gone": "x"}
        s2.send(CDS, ["default/t1", "default/t2", "default/gone"], initial=initial)
        r2 = s2.recv("CDS after reconnecting")
        check([x.name for x in r2.resources] == ["default/t2"], f"only the stale one is resent: {r2.resources}")
        check(list(r2.removed_resources) == ["default/gone"], f"the gone one is removed: {r2.removed_resources}")
        s2.ack(r2)
        s2.none("nothing more")
        s2.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--l7mpctl", required=True)
    p.add_argument("checks", nargs="*")
    a = p.parse_args()
    c = Checks(a.server, a.l7mpctl)
    c.apply()
    names = a.checks or [
        "sotw_subscribe_unsubscribe",
        "sotw_ack_nack",
        "sotw_stale_nonce",
        "sotw_reconnect",
        "delta_subscribe_unsubscribe",
        "delta_wildcard",
        "delta_ack_nack_stale",
        "delta_reconnect_initial_versions",
    ]
    for name in names:
        started = time.time()
        try:
            getattr(c, name)()
        except Exception as e:  # noqa: BLE001 - report any failure with its check's name
            print(f"FAIL {name}: {e}", flush=True)
            if not isinstance(e, Fail):
                traceback.print_exc()
            sys.exit(1)
        print(f"PASS {name} ({time.time() - started:.2f}s)", flush=True)


if __name__ == "__main__":
    main()
