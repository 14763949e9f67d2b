"""Live-server benchmark (run by hand, never a test): the server of `python -m causvid.serve` started in-process
on 127.0.0.1, unpaced (--fps 0), measured from WebSocket clients in this process, with 1 and then 2 clients
streaming at once. For each client:

  first frame     seconds from sending `start` to the first frame's arrival
  frames/s        sustained rate at the client: frames between the end of the first block and the end of the
                  last measured block, over the time between their arrivals
  switch delay    seconds from sending a `prompt` message to the arrival of the first frame of the new prompt
                  (the frame the server's `prompt_applied` event names), median of --switches

    python -m scripts.benchmark_serve                      # the shipped toy student on the CPU
    python -m scripts.benchmark_serve --blocks 30 --switches 5 --json serve_bench.json
    python -m scripts.benchmark_serve --config_path configs/causal_forcing_dmd_chunkwise.yaml \\
        --checkpoint_path checkpoints/chunkwise/causal_forcing.pt --device cuda

The model flags are those of `python -m causvid.serve` (--threads too: 1 by default). `main(argv)` returns the
results.
"""
import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

from causvid.serve.__main__ import build, check, parser as serve_parser
from causvid.serve.server import BackgroundServer

PROMPTS = ["a red square moving left", "a blue circle moving up", "a green triangle moving right",
           "a yellow square moving down"]


def client_run(url, seed, blocks, switches, ready: threading.Barrier):
    """One client's figures: first-frame latency, sustained frames/s over `blocks` blocks, switch delays."""
    with connect(url, max_size=None) as ws:
        ready.wait()
        sent = time.perf_counter()
        ws.send(json.dumps({"type": "start", "prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed}))
        first, block_ends, frames = None, [], 0
        while len(block_ends) < blocks + 1:  # the stats event after each block marks its end
            message = ws.recv()
            if isinstance(message, bytes):
                frames += 1
                first = first or time.perf_counter()
            elif json.loads(message)["type"] == "stats":
                block_ends.append((time.perf_counter(), frames))
        (t0, n0), (t1, n1) = block_ends[0], block_ends[-1]
        delays = []
        for i in range(switches):
            asked = time.perf_counter()
            ws.send(json.dumps({"type": "prompt", "prompt": PROMPTS[(seed + i + 1) % len(PROMPTS)]}))
            applied = False
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    applied = applied or json.loads(message)["type"] == "prompt_applied"
                elif applied:
                    delays.append(time.perf_counter() - asked)
                    break
        ws.send(json.dumps({"type": "stop"}))
        return {"first_frame_s": first - sent, "fps": (n1 - n0) / (t1 - t0), "frames": n1,
                "switch_delay_s": statistics.median(delays) if delays else None}


def measure(url, clients, blocks, switches):
    ready, results, threads = threading.Barrier(clients), [None] * clients, []
    for i in range(clients):
        def work(i=i):
            results[i] = client_run(url, i, blocks, switches, ready)
        threads.append(threading.Thread(target=work))
        threads[-1].start()
    for t in threads:
        t.join()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[serve_parser()], add_help=False,
                                conflict_handler="resolve")
    p.add_argument("--blocks", type=int, default=20, help="blocks measured per client after the first")
    p.add_argument("--switches", type=int, default=3, help="prompt switches per client")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.fps, args.max_sessions, args.port = 0.0, 2, 0
    check(args)
    app, name = build(args)
    results = {"model": name}
    with BackgroundServer(app) as url:
        url = url.replace("http://", "ws://") + "/stream"
        measure(url, 1, 1, 0)  # warm-up: first calls are slower
        app.state.sessions.idle.wait()
        for clients in (1, 2):
            results[f"{clients}_clients"] = measure(url, clients, args.blocks, args.switches)
            app.state.sessions.idle.wait()
    print(f"{name}, unpaced (--fps 0), {args.threads} CPU thread(s), {args.blocks} blocks and {args.switches} "
          "prompt switches per client")
    print(f"{'clients':>7} {'client':>6} {'first frame s':>13} {'frames/s':>9} {'switch delay s':>14}")
    for clients in (1, 2):
        for i, r in enumerate(results[f"{clients}_clients"]):
            delay = "-" if r["switch_delay_s"] is None else f"{r['switch_delay_s']:.3f}"
            print(f"{clients:>7} {i:>6} {r['first_frame_s']:>13.3f} {r['fps']:>9.1f} {delay:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}" if args.json else "wrote nothing (printed only; --json to save)")
    return results


if __name__ == "__main__":
    main()
