#!/usr/bin/env python3
"""Side-by-side peer for the client benchmark: QingCloud's own Python SDK
(`qingcloud-sdk` from PyPI) signing requests and calling the same emulator.

Usage: peer_qingcloud_sdk.py CREDENTIALS_YAML ITERATIONS
Prints one JSON object with the figures (nanoseconds and requests/s).
Only talks to the endpoint in the credentials file (the emulator on loopback).
"""
import json
import sys
import time

from qingcloud.conn.auth import QuerySignatureAuthHandler
from qingcloud.iaas.connection import APIConnection


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    creds = {}
    for line in open(sys.argv[1]):
        if ":" in line and not line.lstrip().startswith("#"):
            key, value = line.split(":", 1)
            creds[key.strip()] = value.strip().strip('"\'')
    iterations = int(sys.argv[2])
    endpoint = creds["endpoint"]
    assert endpoint.startswith("http://127.") or endpoint.startswith("https://127."), endpoint
    protocol, rest = endpoint.split("://", 1)
    host, port = rest.rstrip("/").split(":")

    # Signing cost: the same parameters our signing benchmark uses.
    handler = QuerySignatureAuthHandler(host, creds["qy_access_key_id"], creds["qy_secret_access_key"])
    params = {"action": "DescribeVolumes", "zone": creds["zone"], "limit": "100", "verbose": "1",
              "access_key_id": creds["qy_access_key_id"], "signature_version": 1, "version": 1,
              "time_stamp": "2026-11-21T12:00:00Z"}
    for i in range(1, 11):
        params["volumes.%d" % i] = "vol-%08d" % i
    n = 20000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        handler._calc_signature(dict(params), "GET", "/iaas/")
    sign_ns = (time.perf_counter_ns() - t0) / n

    conn = APIConnection(creds["qy_access_key_id"], creds["qy_secret_access_key"], creds["zone"],
                         host=host, port=int(port), protocol=protocol, retry_time=1)

    def timed(fn):
        lat = []
        for _ in range(iterations):
            t = time.perf_counter_ns()
            resp = fn()
            lat.append(time.perf_counter_ns() - t)
            if resp is None or resp.get("ret_code") != 0:
                raise SystemExit("peer call failed: %r" % (resp,))
        lat.sort()
        total_s = sum(lat) / 1e9
        return {"p50_us": percentile(lat, 50) / 1e3, "p99_us": percentile(lat, 99) / 1e3,
                "rps": iterations / total_s if total_s else 0}

    describe = timed(lambda: conn.describe_instances(limit=20))
    create = timed(lambda: conn.create_volumes(size=10, volume_name="peer-bench"))
    print(json.dumps({"sign_ns": sign_ns, "describe": describe, "create": create}))


if __name__ == "__main__":
    main()
