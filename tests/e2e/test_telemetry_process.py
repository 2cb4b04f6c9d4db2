"""A real process exporting to a collector that is not there: no credentials in its logs, and
SIGTERM still ends it within the grace period."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, free_port, write_config
from tests.e2e.test_process import BIN, wait_serving

PASSWORD = "hunter2-otlp-password"
GRACE_S = 1
# The exporters' own timeout is 10 s; a stop bounded by the grace period ends long before.
EXIT_WITHIN_S = 6.0


def test_dead_collector_with_credentials_in_its_url(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here: every export fails and is retried
    raw = config_dict(tmp_path)
    raw["server"]["grace_period_s"] = GRACE_S
    raw["telemetry"] = {"exporter": "otlp_grpc", "insecure": True, "admin_listen": "",
                        "endpoint": f"http://collector:{PASSWORD}@127.0.0.1:{dead}",
                        "metric_export_interval_s": 0.2}
    target = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([str(BIN), "serve", "--config", str(write_config(tmp_path, raw)),
                             "--listen", target], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(target, proc)
        with grpc.insecure_channel(target) as ch:  # a span waits in the batch for export
            pb_grpc.RouterStub(ch).Route(pb.RouteRequest(task_id="t-1", task_type="fix_bug"),
                                         timeout=5)
        time.sleep(0.6)  # a few metric exports fail, each logged with the endpoint
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert took < EXIT_WITHIN_S, f"SIGTERM took {took:.1f}s with a {GRACE_S}s grace period"
    failures = [line for line in err.splitlines() if "exporting" in line]
    assert failures, err  # the exporter did log its endpoint: there was something to redact
    assert all(f"127.0.0.1:{dead}" in line for line in failures)
    assert PASSWORD not in err
    assert "telemetry flush cut short" in err
