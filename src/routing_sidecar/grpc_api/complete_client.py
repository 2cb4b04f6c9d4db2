"""The CLI's Complete: stream the answer to a terminal, then the attempts as a table."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

from routing_sidecar.grpc_api import auth, client
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


def stream(target: str, request: pb.CompleteRequest, timeout_s: float
           ) -> Iterator[pb.CompleteEvent]:
    """Call Complete on a running sidecar; the events as they arrive (raises grpc.RpcError)."""
    with auth.dial(target) as channel:
        yield from pb_grpc.RouterStub(channel).Complete(request, timeout=timeout_s)


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}"


def _status(status: int) -> str:
    return pb.AttemptStatus.Name(status).removeprefix("ATTEMPT_STATUS_")  # type: ignore[arg-type]


def render_attempts(done: pb.CompleteDone) -> str:
    """One row per attempt, in the order they started: the provenance of the answer."""
    lines = [f"{'#':>2} {'model':<22} {'provider':<12} {'status':<16} {'error':<20} "
             f"{'secs':>6} {'in tok':>7} {'out tok':>7} {'cost':>11}  note"]
    for a in done.attempts:
        note = ", ".join(n for n, on in (("hedge", a.hedged), ("off plan", a.off_plan)) if on)
        lines.append(
            f"{a.index:>2} {a.model:<22} {a.provider:<12} {_status(a.status):<16} "
            f"{a.error_type or '-':<20} {a.duration.ToTimedelta().total_seconds():>6.2f} "
            f"{a.input_tokens:>7} {a.output_tokens:>7} {_usd(a.cost_micros):>11}  {note}")
    return "\n".join(lines)


def render_done(done: pb.CompleteDone) -> str:
    """The closing summary: who answered, why it ended, what it cost."""
    head = (f"answered by {done.model} ({done.provider})" if done.success
            else f"failed: {done.error}")
    if done.cache_hit:
        head = f"answered from the cache: {done.model} ({done.provider}) earlier, no call made"
    return (f"{head}; finish {done.finish_reason or '-'}; {len(done.attempts)} attempt(s); "
            f"{done.input_tokens} in / {done.output_tokens} out tokens; "
            f"cost {_usd(done.cost_micros)}; decision {done.decision_id}")


def print_events(events: Iterator[pb.CompleteEvent], out: TextIO = sys.stdout, *,
                 json_lines: bool = False) -> pb.CompleteDone | None:
    """Print a Complete as it streams (or one JSON object per event); returns its done."""
    done: pb.CompleteDone | None = None
    streamed = False
    for event in events:
        kind = event.WhichOneof("event")
        if json_lines:
            line = client.to_json(event, indent=None)
            print(line, file=out, flush=True)
        elif kind == "decision":
            d = event.decision
            print(f"[{d.model or '-'} ({d.provider or '-'}) under policy {d.policy}: "
                  f"{d.reason}]", file=out, flush=True)
        elif kind == "delta":
            out.write(event.delta.text)
            out.flush()
            streamed = True
        if kind == "done":
            done = event.done
            if not json_lines:
                if done.text and not streamed:  # a cache hit carries the text in both
                    out.write(done.text)
                print("\n", file=out)
                print(render_attempts(done), file=out)
                print(render_done(done), file=out, flush=True)
    return done
